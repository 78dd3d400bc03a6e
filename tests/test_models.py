"""Tests for model resolution and loading: tiny://, local folders, hf:// (offline) and s3:// (moto)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bakeoff.errors import ModelError
from bakeoff.models import load_model, load_tokenizer, resolve_model
from bakeoff.models import tiny as tiny_module
from bakeoff.models.tiny import FAMILIES, SPECIAL_TOKENS, build_tiny_model
from bakeoff.storage import upload_dir

pytest_plugins = ["s3_fixture"]  # the moto S3 server and hf_offline fixtures

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path) -> Path:
    """Every test builds and caches models under its own BAKEOFF_CACHE."""
    root = tmp_path / "cache"
    monkeypatch.setenv("BAKEOFF_CACHE", str(root))
    return root


@pytest.fixture
def build_calls(monkeypatch) -> list[str]:
    """Count tiny model builds (resolve_model imports build_tiny_model from the module on each call)."""
    calls: list[str] = []
    real = tiny_module.build_tiny_model

    def counting(family, out_dir, seed=0):
        calls.append(family)
        return real(family, out_dir, seed)

    monkeypatch.setattr(tiny_module, "build_tiny_model", counting)
    return calls


def test_tiny_model_is_built_once_and_cached(cache, build_calls):
    first = resolve_model("tiny://llama")
    assert Path(first.path) == cache / "models" / f"tiny-llama-v{tiny_module.BUILD_VERSION}"
    assert first.uri == "tiny://llama" and first.kwargs == {}
    weights = Path(first.path) / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    second = resolve_model("tiny://llama")
    assert second.path == first.path
    assert build_calls == ["llama"]
    assert weights.stat().st_mtime_ns == mtime
    # no half-built temporary folders are left beside it
    assert visible(cache / "models") == [f"tiny-llama-v{tiny_module.BUILD_VERSION}"]


def visible(folder: Path) -> list[str]:
    """The folder's entries without the hidden build locks (``.<name>.lock``)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_tiny_build_is_deterministic(tmp_path):
    a = build_tiny_model("llama", tmp_path / "a")
    b = build_tiny_model("llama", tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    other_seed = build_tiny_model("llama", tmp_path / "c", seed=1)
    assert (other_seed / "model.safetensors").read_bytes() != (a / "model.safetensors").read_bytes()
    assert (other_seed / "tokenizer.json").read_bytes() == (a / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tiny_model_loads_and_runs(family):
    uri = f"tiny://{family}"
    tokenizer = load_tokenizer(uri)
    model = load_model(uri)
    assert type(model).__name__ == FAMILIES[family]["class"]
    assert model.dtype == torch.float32
    assert model.config.vocab_size == len(tokenizer)
    # configured like the real Llama 2 tokenizer: <unk> 0, <s> 1, </s> 2, no pad token (bakeoff pads with EOS)
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert tokenizer.convert_tokens_to_ids("<0x41>") == 3 + 0x41  # byte fallback

    enc = tokenizer("[INST] What is 8 plus 9? [/INST]\n\n", return_tensors="pt")
    ids = enc["input_ids"]
    assert ids[0, 0].item() == tokenizer.bos_token_id != ids[0, 1].item()  # add_bos_token: one BOS, added here
    doubled = tokenizer("<s>[INST] What is 8 plus 9?")["input_ids"]
    assert doubled[:2] == [tokenizer.bos_token_id] * 2  # as the real one: a BOS written as text is a second one
    model.eval()
    with torch.inference_mode():
        logits = model(**enc).logits
    assert tuple(logits.shape) == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_tiny_tokenizer_round_trips_task_text():
    tokenizer = load_tokenizer("tiny://llama")
    text = "Spell banana backwards. ananab 17 odd"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_unknown_tiny_family(cache):
    with pytest.raises(ModelError) as info:
        resolve_model("tiny://gpt2")
    msg = str(info.value)
    assert msg.startswith("tiny://gpt2: unknown tiny family")
    assert "llama" in msg and "mixtral" in msg
    assert not (cache / "models" / "tiny-gpt2").exists()
    assert visible(cache / "models") == []  # the temporary build folder is removed


@pytest.mark.parametrize("uri", ["gs://bucket/model", "https://example.com/model", "ftp://x/y"])
def test_unknown_scheme(uri):
    with pytest.raises(ModelError) as info:
        resolve_model(uri)
    assert str(info.value).startswith(f"model {uri}: unknown scheme")
    assert "s3://" in str(info.value) and "tiny://" in str(info.value)


def test_local_folder_without_config(tmp_path):
    folder = tmp_path / "empty-model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError) as info:
        resolve_model(str(folder))
    assert "no config.json" in str(info.value)
    with pytest.raises(ModelError):
        resolve_model(str(tmp_path / "does-not-exist"))


def test_local_folder_model_loads(tmp_path):
    folder = build_tiny_model("mixtral", tmp_path / "my-model")
    resolved = resolve_model(str(folder))
    assert resolved.path == str(folder.resolve())
    model = load_model(str(folder))
    tokenizer = load_tokenizer(str(folder))
    assert model.config.vocab_size == len(tokenizer)


def test_local_folder_with_broken_weights(tmp_path):
    folder = build_tiny_model("llama", tmp_path / "broken")
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError) as info:
        load_model(str(folder))
    assert str(info.value).startswith(f"model {folder}: cannot be loaded")


def test_hf_uri_resolves_without_network():
    resolved = resolve_model("hf://meta-llama/Llama-2-7b-hf@main")
    assert resolved.path == "meta-llama/Llama-2-7b-hf"
    assert resolved.kwargs == {"revision": "main"}
    assert resolve_model("hf://org/name").kwargs == {}
    with pytest.raises(ModelError) as info:
        resolve_model("hf://too/many/parts")
    assert "expected hf://org/name" in str(info.value)


@pytest.mark.parametrize("loader", [load_tokenizer, load_model], ids=["tokenizer", "model"])
def test_hf_offline_fails_with_hint(loader, hf_offline, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    uri = "hf://some-org/some-model-that-is-not-cached"
    with pytest.raises(ModelError) as info:
        loader(uri)
    msg = str(info.value)
    assert msg.startswith(f"model {uri}: cannot be loaded")
    assert "s3://" in msg and "local path" in msg


def test_s3_model_downloads_and_loads(s3, cache, tmp_path):
    built = build_tiny_model("llama", tmp_path / "built")
    keys = upload_dir(built, f"s3://{s3.bucket}/models/tiny-llama")
    assert "models/tiny-llama/model.safetensors" in keys
    uri = f"s3://{s3.bucket}/models/tiny-llama"

    resolved = resolve_model(uri)
    path = Path(resolved.path)
    assert path.parent == cache / "models" and path.name.startswith("s3-")
    assert sorted(p.name for p in path.iterdir()) == sorted(p.name for p in built.iterdir())
    assert (path / "model.safetensors").read_bytes() == (built / "model.safetensors").read_bytes()

    s3.client.remove_object(s3.bucket, "models/tiny-llama/model.safetensors")
    assert resolve_model(uri).path == resolved.path  # cached: not downloaded again

    model = load_model(uri)
    tokenizer = load_tokenizer(uri)
    enc = tokenizer("What is 8 plus 9?", return_tensors="pt")
    with torch.inference_mode():
        assert model(**enc).logits.shape[-1] == len(tokenizer)


def test_s3_model_empty_prefix(s3, cache):
    with pytest.raises(ModelError) as info:
        resolve_model(f"s3://{s3.bucket}/models/nothing-here")
    assert f"s3://{s3.bucket}/models/nothing-here" in str(info.value)
    assert visible(cache / "models") == []


def test_s3_model_without_endpoint(monkeypatch):
    monkeypatch.delenv("S3_ENDPOINT", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with pytest.raises(ModelError) as info:
        resolve_model("s3://bucket/model")
    assert "S3_ENDPOINT" in str(info.value)


def _build_slowly(counter: str, tmp) -> None:
    import time
    from pathlib import Path

    with open(counter, "a") as fh:
        fh.write("built\n")
    time.sleep(0.3)
    (Path(tmp) / "config.json").write_text("{}")


def _want(args) -> str:
    import functools
    from pathlib import Path

    from bakeoff.storage import atomic_dir

    final, counter = args
    return str(atomic_dir(Path(final), functools.partial(_build_slowly, counter)))


def test_processes_wanting_the_same_model_folder_build_it_once(tmp_path):
    """The ranks of one node (or pods sharing the cache PVC) download a base model once: the others wait."""
    import multiprocessing

    final, counter = tmp_path / "models" / "s3-abc", tmp_path / "builds.txt"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        paths = pool.map(_want, [(str(final), str(counter))] * 4)
    assert set(paths) == {str(final)} and (final / "config.json").is_file()
    assert counter.read_text().count("built") == 1
    assert visible(final.parent) == ["s3-abc"]  # no half-built folder left


def test_a_tiny_tokenizer_loads_without_building_the_model(tmp_path, monkeypatch):
    """prepare only counts tokens: it gets the tiny tokenizer alone (no torch, no weights), the same one the
    model is built with."""
    from transformers import AutoTokenizer

    from bakeoff.models import load_tokenizer, resolve_model

    monkeypatch.setenv("BAKEOFF_CACHE", str(tmp_path))
    alone = load_tokenizer("tiny://llama")
    assert not list((tmp_path / "models").glob("tiny-llama-v*"))  # no model was built
    with_model = AutoTokenizer.from_pretrained(resolve_model("tiny://llama").path)
    text = "[INST] What kind of thing is a lion? [/INST] animal héllo ✓"
    assert alone(text)["input_ids"] == with_model(text)["input_ids"] and alone.get_vocab() == with_model.get_vocab()
