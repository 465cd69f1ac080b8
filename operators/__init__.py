"""The pipeline's operators, one subpackage per concern. Dependencies point one way, downwards:

    operators/            the base: config (JobConfig and its validation), schema (every Arrow schema),
                          tasks (task parts, languages, backend capabilities), backends (the backend
                          registry and plugins, by module name), storage (fsspec), retry, metrics
    operators/output/     writing Parquet parts and the run summary         (imports the base)
    operators/io/         listing and reading inputs, selections, runs      (base, output)
    operators/audio/      decoding, voice activity, segmentation            (base, io)
    operators/asr/        the model backends, the ASR stage, coverage, word times  (base, audio)
    operators/labeling/   exports from transcripts: NeMo, HF, WebDataset, subtitles  (base, output, asr)

Where to add things: an input form -> io/sources.py (and AUDIO_EXTENSIONS in config.py for an audio
format); a backend -> asr/<name>.py behind operators.asr.base's protocol, registered in backends.py (or
as a plugin: backends.py); an export -> labeling/ and labeling.export.WRITERS. tests/unit/test_layout.py
checks the direction: no module imports from a concern above its own.
"""
