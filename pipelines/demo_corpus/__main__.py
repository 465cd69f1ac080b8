from pipelines.demo_corpus import MANIFEST, SENTENCES, regenerate

regenerate()
print(f"wrote {len(SENTENCES)} clips and {MANIFEST}")
