"""torchrun on CPU (gloo, 2 processes): data-parallel training of a bundle and sharded certification, checked against
one process."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.integration.bundle_harness import ROOT, run_bundle

pytestmark = pytest.mark.xdist_group("distributed")

BUNDLE = ROOT / "bundles" / "drs_natural" / "configs"


def torchrun(*args: str, nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "monai.bundle", "run", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    ckpt = tmp_path_factory.mktemp("models")
    proc = run_bundle("drs_natural", "train", epochs=1, ckpt_dir=str(ckpt),
                      output_dir=str(tmp_path_factory.mktemp("train")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ckpt


def test_sharded_certification_equals_one_process_and_resumes(ckpt_dir, tmp_path):
    # `--n` is ambiguous to torchrun's own parser, so the settings travel in an args file
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"max_samples": 7, "n0": 4, "n": 32, "batch_size": 16, "ckpt_dir": str(ckpt_dir)}))
    one, two = tmp_path / "one", tmp_path / "two"
    proc = run_bundle("drs_natural", "inference", max_samples=7, n0=4, n=32, batch_size=16, ckpt_dir=str(ckpt_dir),
                      output_dir=str(one))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = torchrun("--config_file", str(BUNDLE / "inference.json"), "--args_file", str(args_file),
                    "--output_dir", str(two))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "rank 1: certified 3 images" in log and "rank 0: certified 4 images" in log

    def strip(rs):
        return [{k: v for k, v in r.items() if k != "time"} for r in rs]

    single, sharded = rows(one / "certify.csv"), rows(two / "certify.csv")
    assert len(single) == 14 and strip(sharded) == strip(single), "same seeds: the same certificates, in order"
    assert not list(two.glob("*.partial.csv")), "partial files are merged and removed"

    # rank 1 killed before the merge: only rank 0's partial rows are on disk; a rerun certifies just the rest
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    rank0 = [r for r in sharded if int(r["index"]) % 2 == 0]
    with open(resumed / "certify.rank0.partial.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rank0[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rank0)
    proc = run_bundle("drs_natural", "inference", max_samples=7, n0=4, n=32, batch_size=16, ckpt_dir=str(ckpt_dir),
                      output_dir=str(resumed))
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = rows(resumed / "certify.csv")
    assert strip(final) == strip(single)
    kept = {(r["method"], r["index"]): r["time"] for r in rank0}
    assert all(r["time"] == kept[(r["method"], r["index"])] for r in final if (r["method"], r["index"]) in kept), \
        "finished rows are reused, not recomputed"
    assert not list(resumed.glob("*.partial.csv"))

    # other images at the same indices (another datalist section) are certified anew, never given old rows
    proc = run_bundle("drs_natural", "inference", max_samples=7, n0=4, n=32, batch_size=16, ckpt_dir=str(ckpt_dir),
                      output_dir=str(one), **{"evaluator#section": "training"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = rows(one / "certify.csv")
    assert len(again) == 14 and not {r["path"] for r in again} & {r["path"] for r in single}


def test_two_process_training_keeps_replicas_in_sync(tmp_path):
    """DistributedDataParallel under torchrun: each rank trains on its own shard and the gradients are averaged, so
    both ranks end with the same weights."""
    # every rank saves its own copy here (the bundle's saver runs on rank 0 only)
    frag = tmp_path / "per_rank_saver.json"
    frag.write_text(json.dumps({
        "train#trainer#train_handlers": "$@train#handlers[:1] + [trust_monai.engines.certify.ModelSaver(@models, "
                                        f"'{tmp_path}/rank' + str(torch.distributed.get_rank()) + '.pt')]",
    }))
    cfg = "[" + ",".join(f"'{p}'" for p in (BUNDLE / "train.json", BUNDLE / "multi_gpu_train.json", frag)) + "]"
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"epochs": 1, "max_train": 512, "batch_size": 64, "ckpt_dir": str(tmp_path)}))
    proc = torchrun("--config_file", cfg, "--args_file", str(args_file))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    params = [k for k in a if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert params and all(torch.equal(a[k], b[k]) for k in params), "replicas drifted apart: gradients not averaged"
    # ... while the BatchNorm statistics each rank gathered on its own shard differ: the ranks did see different data
    stats = [k for k in a if k.endswith("running_mean")]
    assert stats and any(not torch.equal(a[k], b[k]) for k in stats)


MULTI = sorted(p.parent.parent.name for p in (ROOT / "bundles").glob("*/configs/multi_gpu_train.json"))


@pytest.mark.parametrize("name", [n for n in MULTI if n != "drs_natural"])
def test_multi_gpu_train_config_runs_under_torchrun(name, tmp_path):
    """Every bundle's multi_gpu_train.json trains under torchrun (2 CPU processes, gloo) and saves a plain state
    dict (no DistributedDataParallel ``module.`` prefix) that the single-process network loads."""
    from tests.integration.bundle_harness import resolve_id, smoke_overrides

    configs = ROOT / "bundles" / name / "configs"
    # the sample data is prepared here, once, not by two ranks at the same time
    args = {**smoke_overrides(name, "train"), "dataset_dir": str(resolve_id(name, "train", "dataset_dir")),
            "epochs": 1, "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "out")}
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps(args))
    cfg = f"['{configs / 'train.json'}','{configs / 'multi_gpu_train.json'}']"
    proc = torchrun("--config_file", cfg, "--args_file", str(args_file))
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = sorted((tmp_path / "models").glob(WEIGHTS.get(name, "*.pt")))
    assert saved, "rank 0 saved no checkpoint"
    for path in saved:  # D-VAE: one network per stage
        state = torch.load(path, weights_only=True)
        assert state and not any(k.startswith("module.") for k in state)
        net = resolve_id(name, "train", "network_def", **{k: v for k, v in args.items() if k != "dataset_dir"},
                         dataset_dir=args["dataset_dir"])
        if name.startswith("drs"):
            net = resolve_id(name, "train", "models", dataset_dir=args["dataset_dir"])
        net.load_state_dict(state)
    if name in CHECKS:
        CHECKS[name](tmp_path, args, proc.stdout + proc.stderr)


def _noise_rows_of_every_rank(tmp_path: Path, args: dict, log: str) -> None:
    """Each rank runs PGD on its own shard's rows; rank 0's saved table must hold rank 1's rows too (merged after
    every round), so no row is left at its random initialisation."""
    from trust_monai.protect import load_poison

    noise = load_poison(tmp_path / "models" / "noise_em_samplewise.pt")
    init = type(noise)(**noise.config())  # the same seed: the table before training
    assert noise.num_items == args["max_train"]
    moved = (noise.delta - init.delta).abs().flatten(1).amax(1)
    assert bool((moved > 0).all()), f"rows never updated: {(moved == 0).nonzero().flatten().tolist()}"
    assert float(noise.delta.abs().max()) <= noise.eps + 1e-7
    assert log.count("accuracy on perturbed training data") == args["epochs"], "one round log, from rank 0"


def _trained_on_two_ranks(tmp_path: Path, args: dict, log: str) -> None:
    stages = sorted((tmp_path / "models").glob("*_stage*.pt"))
    assert len(stages) == 2 and log.count("trained in") == 2 and "on 2 ranks" in log


# which files are network weights (the noise file of ue_natural is a poison record, checked on its own)
WEIGHTS = {"ue_natural": "surrogate_*.pt"}
CHECKS = {"ue_natural": _noise_rows_of_every_rank, "dvae": _trained_on_two_ranks, "dvae_natural": _trained_on_two_ranks}


def test_sharded_detection_equals_one_process(tmp_path):
    """MoE-FFD inference under torchrun: each rank scores its shard, rank 0 writes the one report, equal to a single
    process's."""
    from tests.integration.bundle_harness import resolve_id, smoke_overrides

    ckpt = tmp_path / "models"
    dataset_dir = str(resolve_id("moe_ffd", "train", "dataset_dir"))
    proc = run_bundle("moe_ffd", "train", ckpt_dir=str(ckpt), dataset_dir=dataset_dir, output_dir=str(tmp_path / "t"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = tmp_path / "one", tmp_path / "two"
    proc = run_bundle("moe_ffd", "inference", ckpt_dir=str(ckpt), dataset_dir=dataset_dir, output_dir=str(one))
    assert proc.returncode == 0, proc.stderr[-3000:]
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({**smoke_overrides("moe_ffd", "inference"), "ckpt_dir": str(ckpt),
                                     "dataset_dir": dataset_dir, "output_dir": str(two)}))
    proc = torchrun("--config_file", str(ROOT / "bundles/moe_ffd/configs/inference.json"), "--args_file",
                    str(args_file))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert len(a["images"]) > 2 and a["images"] == b["images"] and a["volumes"] == b["volumes"]


def test_sharded_protection_equals_one_process_and_resumes(tmp_path):
    """UMed inference under torchrun: each rank writes its cases and its own manifest; rank 0 merges them into one
    manifest.json. The files equal a single process's; a rerun after a killed rank redoes only the missing cases."""
    import hashlib

    from tests.integration.bundle_harness import resolve_id, smoke_overrides

    ckpt = tmp_path / "models"
    dataset_dir = str(resolve_id("umed", "inference", "dataset_dir"))
    proc = run_bundle("umed", "train", epochs=1, ckpt_dir=str(ckpt), output_dir=str(tmp_path / "t"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_bundle("umed", "inference", ckpt_dir=str(ckpt), output_dir=str(one)).returncode == 0
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({**smoke_overrides("umed", "inference"), "dataset_dir": dataset_dir,
                                     "ckpt_dir": str(ckpt), "progress": False}))
    run = lambda out: torchrun("--config_file", str(ROOT / "bundles/umed/configs/inference.json"),  # noqa: E731
                               "--args_file", str(args_file), "--output_dir", str(out))
    proc = run(two)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def files(d: Path) -> dict[str, str]:
        return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(d.rglob("*")) if p.is_file() and p.name != "manifest.json"}

    assert files(one) == files(two) and len(files(one)) > 4
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (one, two))
    assert m1["cases"] == m2["cases"], "one merged manifest, in datalist order"
    assert not list(two.glob("manifest.rank*.json"))

    # a killed rank 1: its cases and the merged manifest are gone, rank 0's manifest is left
    m2["cases"] = m2["cases"][0::2]
    for c in m1["cases"][1::2]:
        (two / c["output"]).unlink()
    (two / "manifest.json").unlink()
    (two / "manifest.rank0.json").write_text(json.dumps(m2))
    kept = {c["output"]: (two / c["output"]).stat().st_mtime_ns for c in m2["cases"]}
    proc = run(two)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert files(two) == files(one)
    assert {o: (two / o).stat().st_mtime_ns for o in kept} == kept, "finished cases are not redone"
    assert json.loads((two / "manifest.json").read_text())["cases"] == m1["cases"]


def _hashes(d: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    import hashlib

    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() and p.name not in skip}


def _timeless(cases: list[dict]) -> list[dict]:
    """Manifest records without the wall-clock seconds (the only thing two equal runs may differ in)."""
    out = json.loads(json.dumps(cases))
    for c in out:
        for m in c["metrics"].values():
            if isinstance(m, dict):
                m.pop("time", None)
    return out


def test_sharded_segmentation_certification_equals_one_process_and_resumes(tmp_path):
    """DRS segmentation certification under torchrun: rank r certifies every w-th case into its own manifest.rank<r>
    file, rank 0 merges them in datalist order. Label maps and records equal a single process's; after a killed rank
    a rerun certifies only its missing cases."""
    from tests.integration.bundle_harness import resolve_id, smoke_overrides

    ckpt = tmp_path / "models"
    dataset_dir = str(resolve_id("drs", "inference", "dataset_dir"))
    # untrained base models do as well as trained ones here (only equality is checked), and save a training run
    torch.manual_seed(0)
    models = resolve_id("drs", "inference", "models", dataset_dir=dataset_dir)
    ckpt.mkdir()
    torch.save(models.state_dict(), resolve_id("drs", "inference", "checkpoint", ckpt_dir=str(ckpt)))
    args = {**smoke_overrides("drs", "inference"), "max_cases": 3, "dataset_dir": dataset_dir, "ckpt_dir": str(ckpt),
            "progress": False}
    one, two = tmp_path / "one", tmp_path / "two"
    proc = run_bundle("drs", "inference", output_dir=str(one), **args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps(args))
    run = lambda out: torchrun("--config_file", str(ROOT / "bundles/drs/configs/inference.json"),  # noqa: E731
                               "--args_file", str(args_file), "--output_dir", str(out))
    proc = run(two)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "rank 0: certified 2 cases" in log and "rank 1: certified 1 cases" in log

    maps = lambda d: {k: v for k, v in _hashes(d).items() if k.startswith(("rs/", "drs/"))}  # noqa: E731
    assert len(maps(one)) == 6 and maps(two) == maps(one), "the same certified label maps, byte for byte"
    m1, m2 = (json.loads((d / "manifest.json").read_text())["cases"] for d in (one, two))
    assert len(m1) == 3 and _timeless(m2) == _timeless(m1), "one merged manifest, in datalist order"
    assert [{k: v for k, v in r.items() if k != "time"} for r in rows(two / "certify_cases.csv")] == \
        [{k: v for k, v in r.items() if k != "time"} for r in rows(one / "certify_cases.csv")]
    assert not list(two.glob("manifest.rank*.json"))

    # rank 1 killed: its label maps and the merged manifest are gone, rank 0's own manifest is left
    for m in ("rs", "drs"):
        (two / m1[1]["metrics"][m]["output"]).unlink()
    (two / "manifest.json").unlink()
    doc = json.loads((one / "manifest.json").read_text())
    doc["cases"] = m2[0::2]
    (two / "manifest.rank0.json").write_text(json.dumps(doc))
    kept = {o: (two / o).stat().st_mtime_ns for o in maps(two)}
    proc = run(two)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert maps(two) == maps(one)
    assert {o: (two / o).stat().st_mtime_ns for o in kept} == kept, "finished cases are not redone"
    assert _timeless(json.loads((two / "manifest.json").read_text())["cases"]) == _timeless(m1)
    assert not list(two.glob("manifest.rank*.json"))


def test_sharded_poison_writer_equals_one_process_and_resumes(tmp_path):
    """ue_natural inference (PoisonWriter) under torchrun: rank r writes batches r, r + w, ... and its own manifest;
    rank 0 writes dataset.json and merges the manifests. Every file equals a single process's; after a killed rank
    a rerun (here a single process) writes only its missing images."""
    from tests.integration.bundle_harness import resolve_id, smoke_overrides
    from trust_monai.protect import make_poison, save_poison

    ckpt = tmp_path / "models"
    args = {**smoke_overrides("ue_natural", "inference"), "batch_size": 16, "ckpt_dir": str(ckpt)}
    args["dataset_dir"] = str(resolve_id("ue_natural", "inference", "dataset_dir"))
    # a seeded, untrained noise table: the writer's job is the same whatever the noise learned
    save_poison(make_poison("em_samplewise", 10, [1, 28, 28], args["max_train"], seed=3),
                resolve_id("ue_natural", "inference", "noise_file", ckpt_dir=str(ckpt)))
    one, two = tmp_path / "one", tmp_path / "two"
    proc = run_bundle("ue_natural", "inference", output_dir=str(one), **args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps(args))
    proc = torchrun("--config_file", str(ROOT / "bundles/ue_natural/configs/inference.json"), "--args_file",
                    str(args_file), "--output_dir", str(two))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote 64 poisoned images" in proc.stdout + proc.stderr, "rank 0 reports every rank's images"

    files = _hashes(one, skip=("manifest.json",))
    assert len(files) == 64 + 32 + 1 and _hashes(two, skip=("manifest.json",)) == files
    m1, m2 = (json.loads((d / "manifest.json").read_text())["cases"] for d in (one, two))
    assert len(m1) == 96 and m2 == m1, "one merged manifest, in datalist order"
    assert not list(two.glob("manifest.rank*.json"))

    # rank 1 killed: the images of its batches (1, 3, 5 of 16) and the merged manifest are gone
    batches = [m1[i: i + 16] for i in range(0, 96, 16)]
    for c in (c for b in batches[1::2] for c in b):
        (two / c["output"]).unlink()
    (two / "manifest.json").unlink()
    doc = json.loads((one / "manifest.json").read_text())
    doc["cases"] = [c for b in batches[0::2] for c in b]
    (two / "manifest.rank0.json").write_text(json.dumps(doc))
    kept = {c["output"]: (two / c["output"]).stat().st_mtime_ns for c in doc["cases"]}
    proc = run_bundle("ue_natural", "inference", output_dir=str(two), **args)  # the rerun may be one process
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote 32 poisoned images" in proc.stdout + proc.stderr
    assert _hashes(two, skip=("manifest.json",)) == files
    assert {o: (two / o).stat().st_mtime_ns for o in kept} == kept, "finished images are not rewritten"
    assert json.loads((two / "manifest.json").read_text())["cases"] == m1
    assert not list(two.glob("manifest.rank*.json"))


def _sync_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    from trust_monai.protect import ErrorMinimizingNoise
    from trust_monai.utils import dist

    dist.init_from_env("cpu")
    p, q = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([1.0, 2.0, 3.0]) * (rank + 1)  # q has no gradient: skipped alike on every rank
    dist.all_reduce_gradients([p, q])
    # sample-wise: rank r owns rows r, r + w, ... and moves them to r + 1 (scaled to stay in the budget)
    rows = ErrorMinimizingNoise(4, [1, 2, 2], mode="samplewise", seed=0)
    mine = torch.zeros(4, dtype=torch.bool)
    mine[rank::world] = True
    rows.delta[mine] = 0.01 * (rank + 1)
    rows.merge_ranks(mine)
    # class-wise: both ranks update row 0, nobody row 1
    classes = ErrorMinimizingNoise(2, [1, 2, 2], mode="classwise", seed=0)
    classes.delta[0] = 0.01 * (rank + 1)
    classes.merge_ranks(torch.tensor([True, False]))
    net = torch.nn.BatchNorm1d(2)
    net.running_mean.fill_(rank)
    dist.broadcast_state(net, buffers_only=True)
    torch.save({"grad": p.grad, "rows": rows.delta, "classes": classes.delta, "mean": net.running_mean},
               f"{out}/rank{rank}.pt")
    dist.destroy()


def test_gradient_and_noise_table_sync(tmp_path):
    """The helpers behind the custom trainers' data parallelism, on 2 gloo processes: gradients are averaged, a
    noise table gets each sample-wise row from its owner and each class-wise row as the mean of the ranks that moved it,
    and batch-norm statistics come from rank 0."""
    import socket

    import torch.multiprocessing as mp

    from trust_monai.protect import ErrorMinimizingNoise

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sync_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between the ranks"
    assert torch.equal(a["grad"], torch.tensor([1.5, 3.0, 4.5]))
    assert torch.allclose(a["rows"][0::2], torch.full((2, 1, 2, 2), 0.01))
    assert torch.allclose(a["rows"][1::2], torch.full((2, 1, 2, 2), 0.02))
    init = ErrorMinimizingNoise(2, [1, 2, 2], mode="classwise", seed=0).delta
    assert torch.allclose(a["classes"][0], torch.full((1, 2, 2), 0.015)) and torch.equal(a["classes"][1], init[1])
    assert torch.equal(a["mean"], torch.zeros(2))


def _empty_shard_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    from trust_monai.errors import TrustMonaiError
    from trust_monai.networks import SmallResNet
    from trust_monai.protect import ErrorMinimizingNoise
    from trust_monai.protect.error_minimizing_trainer import ErrorMinimizingTrainer
    from trust_monai.utils import dist

    dist.init_from_env("cpu")
    items = [{"image": torch.zeros(1, 8, 8), "label": 0, "index": 0}]  # one image for two processes
    loader = torch.utils.data.DataLoader(items, batch_size=1, sampler=dist.shard(range(len(items))))
    net = SmallResNet(2, 1, 2, widths=(4,), blocks=(1,))
    try:
        ErrorMinimizingTrainer(device="cpu", max_epochs=1, train_data_loader=loader, network=net,
                               optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                               noise=ErrorMinimizingNoise(1, [1, 8, 8], mode="samplewise", seed=0))
        outcome = "built"
    except TrustMonaiError as e:
        outcome = str(e)
    with open(f"{out}/rank{rank}.txt", "w") as f:
        f.write(outcome)
    dist.destroy()


def test_error_minimizing_training_refuses_a_process_without_images(tmp_path):
    """More processes than training images: every rank stops with the same clear error instead of the others
    waiting forever for the empty rank's merge."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_empty_shard_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    for r in (0, 1):
        msg = (tmp_path / f"rank{r}.txt").read_text()
        assert "2 processes for 1 training images" in msg and "at most 1 processes" in msg, msg
