from edgeqat.config import RunConfig, load_config
from edgeqat.paths import ASSETS


def test_shipped_default_yaml_is_the_default_config():
    assert load_config(ASSETS / "default.yaml") == RunConfig()


def test_embedded_model_and_data_ship_with_the_package():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (ASSETS / "default_model" / name).is_file()
    assert (ASSETS / "data" / "finetune.jsonl").stat().st_size > 10_000
    assert (ASSETS / "data" / "heldout.jsonl").stat().st_size > 1_000
