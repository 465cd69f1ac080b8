"""operators.config: validation with dotted field names, --set overrides, redaction, profiles."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from operators.config import (ConfigError, DecodeConfig, JobConfig, SegmentConfig, load_config,
                              parse_override)

REPO = Path(__file__).resolve().parents[2]
PROFILES = sorted((REPO / "configs").glob("*.yaml"))


def _write(tmp_path, data) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_defaults_validate():
    cfg = JobConfig()
    assert cfg.asr.backend == "whisper"
    assert cfg.asr.batch_size == 16
    assert cfg.segment.max_segment_s is None  # the backend's choice: whisper's 30 s window
    assert cfg.segment.for_backend(30.0, 30.0).max_segment_s == 30.0
    assert cfg.decode.max_duration_s == 4 * 3600
    assert load_config() == cfg
    assert JobConfig.model_validate(cfg.model_dump()) == cfg


def test_unknown_field_names_dotted_field(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, {"asr": {"batchsize": 4}}))
    msg = str(info.value)
    assert "asr.batchsize" in msg
    assert "unknown field" in msg
    assert str(tmp_path / "job.yaml") in msg


def test_unknown_nested_field(tmp_path):
    with pytest.raises(ConfigError, match=r"asr\.model\.devise"):
        load_config(_write(tmp_path, {"asr": {"model": {"devise": "cpu"}}}))


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match=r"\bdecoder\b"):
        load_config(_write(tmp_path, {"decoder": {"batch_size": 4}}))


def test_wrong_type_names_field_and_value(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, {"asr": {"batch_size": "many"}}))
    msg = str(info.value)
    assert "asr.batch_size" in msg
    assert "'many'" in msg


def test_out_of_range_names_field_and_value():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["decode.batch_size=0"])
    assert "decode.batch_size" in str(info.value)
    assert "(got 0)" in str(info.value)


def test_bad_literal():
    with pytest.raises(ConfigError, match=r"decode\.resample_quality.*'ULTRA'"):
        load_config(None, ["decode.resample_quality=ULTRA"])


def test_unknown_backend_lists_available():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["asr.backend=parakeet"])
    msg = str(info.value)
    assert "asr.backend" in msg
    assert "'parakeet'" in msg
    assert "whisper" in msg


def test_set_overrides_apply_with_yaml_typing(tmp_path):
    path = _write(tmp_path, {"name": "profile", "asr": {"batch_size": 2, "num_actors": 3}})
    cfg = load_config(path, ["asr.batch_size=4", "output.overwrite=true", "asr.model.language=null",
                             "segment.max_segment_s=20", "input.extensions=[.wav, .flac]",
                             "input.storage_options={endpoint_url: 'http://localhost:8333'}",
                             "name=from-cli"])
    assert cfg.asr.batch_size == 4 and isinstance(cfg.asr.batch_size, int)
    assert cfg.asr.num_actors == 3  # untouched profile value stays
    assert cfg.output.overwrite is True
    assert cfg.asr.model.language is None
    assert cfg.segment.max_segment_s == 20.0
    assert cfg.input.extensions == [".wav", ".flac"]
    assert cfg.input.storage_options == {"endpoint_url": "http://localhost:8333"}
    assert cfg.name == "from-cli"


def test_later_override_wins():
    assert load_config(None, ["asr.batch_size=4", "asr.batch_size=6"]).asr.batch_size == 6


def test_keyword_fields_apply_and_none_is_ignored():
    cfg = load_config(None, None, name="kw", output=None)
    assert cfg.name == "kw"
    assert cfg.output.uri is None


def test_parse_override():
    assert parse_override("a.b=1") == ("a.b", 1)
    assert parse_override(" a.b =x=y") == ("a.b", "x=y")
    assert parse_override("a.b=") == ("a.b", None)
    assert parse_override("a.b='007'") == ("a.b", "007")
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_override("asr.batch_size")


def test_override_through_a_scalar_is_an_error():
    with pytest.raises(ConfigError, match="not a section"):
        load_config(None, ["name=x", "name.sub=1"])


def test_min_segment_not_below_max_is_rejected():
    with pytest.raises(ConfigError, match=r"segment.*min_segment_s must be smaller"):
        load_config(None, ["segment.min_segment_s=30", "segment.max_segment_s=30"])
    with pytest.raises(ValueError):
        SegmentConfig(min_segment_s=40.0, max_segment_s=30.0)


def test_assignment_is_validated():
    cfg = DecodeConfig()
    with pytest.raises(ValueError):
        cfg.batch_size = 0


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "asr: [unclosed\n"))


def test_yaml_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_empty_yaml_is_defaults(tmp_path):
    assert load_config(_write(tmp_path, "")) == JobConfig()


def test_redacted_hides_secrets_keeps_endpoint():
    opts = {"endpoint_url": "http://minio:9000", "key": "AKIA123", "secret": "s3cr3t", "token": "tok",
            "anon": False, "region_name": "us-east-1"}
    cfg = JobConfig.model_validate({"input": {"uri": "s3://b/in", "storage_options": opts},
                                    "output": {"uri": "s3://b/out",
                                               "storage_options": {"aws_secret_access_key": "x",
                                                                   "endpoint_url": "http://e"}}})
    red = cfg.redacted()
    assert red["input"]["storage_options"] == {
        "endpoint_url": "http://minio:9000", "key": "***", "secret": "***", "token": "***",
        "anon": False, "region_name": "us-east-1"}
    assert red["output"]["storage_options"] == {"aws_secret_access_key": "***", "endpoint_url": "http://e"}
    text = repr(red)
    for secret in ("AKIA123", "s3cr3t", "tok'"):
        assert secret not in text
    # the config itself is untouched
    assert cfg.input.storage_options["secret"] == "s3cr3t"


def test_redacted_hides_nested_secrets():
    cfg = JobConfig.model_validate({"input": {"storage_options": {
        "endpoint_url": "http://minio:9000",
        "client_kwargs": {"aws_access_key_id": "AKIA123", "aws_secret_access_key": "s3cr3t",
                          "region_name": "us-east-1"}}}})
    text = repr(cfg.redacted())
    assert "s3cr3t" not in text
    assert "AKIA123" not in text
    assert "http://minio:9000" in text


@pytest.mark.parametrize("profile", PROFILES or [None], ids=[p.name for p in PROFILES] or ["none"])
def test_every_profile_loads(profile):
    if profile is None:
        pytest.skip("no configs/*.yaml profiles in the repository")
    cfg = load_config(profile)
    assert isinstance(cfg, JobConfig)


def test_select_weak_needs_previous():
    with pytest.raises(ConfigError, match=r"select.*previous"):
        load_config(None, ["select.mode=weak"])
    assert load_config(None, ["select.mode=changed", "select.previous=s3://o/v1"]).select.previous == "s3://o/v1"


def test_write_tasks_bounded_and_sized_to_how_often_files_come():
    """The write stage always runs under a cap (Ray Data otherwise lets it hold the CPUs decode needs):
    2 for whole rows_per_file files; with a file per ASR batch, one writer per batch in flight."""
    cfg = JobConfig()
    assert cfg.write.rows_per_file and cfg.write.tasks(cfg.asr) == 2
    per_batch = load_config(None, ["write.rows_per_file=0", "asr.num_actors=3", "asr.max_actors=8",
                                   "asr.concurrent_batches=2"])
    assert per_batch.write.tasks(per_batch.asr) == 16
    assert load_config(None, ["write.max_tasks=5", "write.rows_per_file=0"]).write.tasks(cfg.asr) == 5
    with pytest.raises(ConfigError, match="write.max_tasks"):
        load_config(None, ["write.max_tasks=0"])
