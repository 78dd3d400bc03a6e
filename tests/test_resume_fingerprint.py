"""A checkpoint is resumed only by the training it belongs to: each records a fingerprint of what determined
it (model, training and PEFT settings, the splits' content, the seed, library versions) and lives under
``fp-<hash>/``; a rerun with other settings trains afresh beside it and says what changed."""

from __future__ import annotations

import json

from bakeoff.data.prepare import prepare_data
from bakeoff.spec import parse_spec
from bakeoff.train.checkpoints import (
    FINGERPRINT,
    MARKER,
    CheckpointStore,
    changed_parts,
    fingerprint_digest,
    fingerprint_key,
)
from bakeoff.train.finetune import finetune

pytest_plugins = ["s3_fixture"]


def _checkpoint(folder, step, record=None):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if record is not None:
        (path / FINGERPRINT).write_text(json.dumps(record))
    (path / MARKER).write_text("complete\n")
    return path


def test_the_digest_ignores_key_order_and_changed_parts_names_what_differs():
    a = {"learning_rate": 1e-3, "seed": 1, "data": "x", "peft.r": 8}
    b = {"peft.r": 8, "data": "x", "seed": 1, "learning_rate": 1e-3}
    assert fingerprint_digest(a) == fingerprint_digest(b)
    assert changed_parts(a, {**a, "learning_rate": 2e-3, "seed": 2}) == ["learning_rate", "seed"]
    assert changed_parts(a, {k: v for k, v in a.items() if k != "data"}) == ["data"]  # a part gone counts too
    assert fingerprint_key(fingerprint_digest(a)).startswith("fp-") and len(fingerprint_key("0" * 64)) == 19


def test_a_store_resumes_only_its_own_fingerprint_and_names_the_earlier_one(tmp_path):
    parts = {"learning_rate": 1e-3, "seed": 1, "data": "x"}
    other = {"learning_rate": 5e-4, "seed": 2, "data": "y"}
    store = CheckpointStore(tmp_path, parts=parts)
    assert store.local_dir == tmp_path / fingerprint_key(store.digest)
    older = CheckpointStore(tmp_path, parts=other)
    _checkpoint(older.local_dir, 600, {"digest": older.digest, "parts": other})
    # a checkpoint copied into our folder that records another fingerprint is not ours either
    _checkpoint(store.local_dir, 700, {"digest": older.digest, "parts": other})
    assert store.latest() is None
    earlier = store.earlier()
    assert earlier.step in (600, 700)
    assert earlier.changed(parts) == ["learning_rate", "seed", "data"]
    assert "(changed: learning_rate, seed, data)" in earlier.reason(parts)
    mine = _checkpoint(store.local_dir, 20, {"digest": store.digest, "parts": parts})
    assert store.latest() == mine and older.earlier() is not None


def test_a_checkpoint_from_before_fingerprints_is_not_resumed(tmp_path):
    _checkpoint(tmp_path, 600)  # the old layout: directly under the arm's root, no fingerprint
    store = CheckpointStore(tmp_path, parts={"seed": 1})
    assert store.latest() is None
    earlier = store.earlier()
    assert earlier.step == 600 and earlier.parts is None and "records no fingerprint" in earlier.reason({"seed": 1})


def tiny_spec(tmp_path, seed=3, **training):
    src = tmp_path / "rows.jsonl"
    if not src.exists():
        rows = [{"instruction": f"What is {i} plus {i}?", "output": str(2 * i)} for i in range(40)]
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = parse_spec({
        "name": "fp", "seed": seed,
        "data": {"sources": [{"uri": str(src)}],
                 "template": {"prompt": "Q: {instruction}\nA:", "completion": " {response}"},
                 "split": {"train": 32, "validation": 4, "test": 4}},
        "training": {"max_steps": 4, "batch_size": 4, "logging_steps": 1, "eval_steps": 2, "learning_rate": 1e-3,
                     "max_seq_length": 64, **training},
        "peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "arms": [{"name": "tiny", "model": "tiny://llama"}],
    })
    data = tmp_path / f"data-{seed}"
    if not data.exists():
        prepare_data(spec.data, spec.seed, data)
    return spec, data


def train(spec, data, out, checkpoint_uri):
    arm = spec.arm("tiny")
    return finetune(arm, spec.training, spec.arm_peft(arm), data, out, spec.seed,
                    checkpoint_uri=checkpoint_uri(arm) if callable(checkpoint_uri) else checkpoint_uri)


def test_changed_settings_train_afresh_and_an_unchanged_rerun_resumes(tmp_path, cache_env, caplog):
    from bakeoff.report.render import _resumed

    ckpt = str(tmp_path / "ckpt")
    spec, data = tiny_spec(tmp_path)
    first = train(spec, data, tmp_path / "first", ckpt)
    assert first.resumed_from_step is None and first.resume_status == "fresh" and first.fingerprint
    again = train(spec, data, tmp_path / "again", ckpt)
    assert again.resumed_from_step == 4 and again.resume_status == "resumed from step 4"
    assert again.fingerprint == first.fingerprint
    # (the Trainer, resumed at max_steps mid-epoch, trains one step more: again.steps may be 5)

    changed, changed_data = tiny_spec(tmp_path, seed=4, learning_rate=5e-4)  # the new seed reshuffles the splits
    caplog.set_level("WARNING")
    fresh = train(changed, changed_data, tmp_path / "fresh", ckpt)
    assert fresh.resumed_from_step is None and fresh.steps == 4  # trained, not "resumed" at the end
    assert fresh.fingerprint != first.fingerprint
    assert fresh.fingerprint_changed == ["learning_rate", "data", "seed"]
    assert fresh.resume_status.startswith(f"fresh: earlier checkpoint (step {again.steps}, ")
    assert fresh.resume_status.endswith("had a different fingerprint (changed: learning_rate, data, seed)")
    assert "training from the start, not from the earlier checkpoint" in caplog.text
    record = json.loads((tmp_path / "fresh" / "training.json").read_text())
    assert record["resume_status"] == fresh.resume_status and record["fingerprint_changed"] == fresh.fingerprint_changed
    assert _resumed(record).startswith("no (earlier checkpoint") and _resumed(again.to_dict()) == "from step 4"
    # both trainings' checkpoints are kept, each under its own fingerprint
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {fingerprint_key(first.fingerprint),
                                                               fingerprint_key(fresh.fingerprint)}
    recorded = json.loads(next((tmp_path / "ckpt").glob(f"{fingerprint_key(fresh.fingerprint)}/checkpoint-*/"
                                                        f"{FINGERPRINT}")).read_text())
    assert recorded["digest"] == fresh.fingerprint
    assert {"model", "model_revision", "learning_rate", "peft.r", "data", "seed", "version.torch",
            "version.transformers", "version.peft", "version.trl"} <= set(recorded["parts"])


def test_settings_that_only_move_checkpoints_or_logs_still_resume(tmp_path, cache_env):
    ckpt = str(tmp_path / "ckpt")
    spec, data = tiny_spec(tmp_path)
    train(spec, data, tmp_path / "first", ckpt)
    moved, _ = tiny_spec(tmp_path, logging_steps=2, checkpoint_steps=2)
    assert train(moved, data, tmp_path / "again", ckpt).resumed_from_step == 4


def test_on_s3_a_changed_training_does_not_resume_the_earlier_one(tmp_path, cache_env, s3):
    uri = f"s3://{s3.bucket}/ckpt/tiny"
    spec, data = tiny_spec(tmp_path, max_steps=2)
    first = train(spec, data, tmp_path / "first", uri)
    again = train(spec, data, tmp_path / "again", uri)
    assert again.resumed_from_step == 2
    changed, _ = tiny_spec(tmp_path, max_steps=2, learning_rate=5e-4)
    fresh = train(changed, data, tmp_path / "fresh", uri)
    assert fresh.resumed_from_step is None and fresh.fingerprint_changed == ["learning_rate"]
    assert f"{uri}/{fingerprint_key(first.fingerprint)}/checkpoint-{again.steps})" in fresh.resume_status
    names = {o.object_name for o in s3.client.list_objects(s3.bucket, prefix="ckpt/", recursive=True)}
    assert f"ckpt/tiny/{fingerprint_key(fresh.fingerprint)}/checkpoint-2/{FINGERPRINT}" in names
