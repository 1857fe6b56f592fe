"""The blank-frame phase in a plain PyTorch loop (no Ray): Moving-MNIST 10->10 generated on the
fly (64x64 canvas, area-averaged to --size), lmc.MemoryAlignment on a small model, the test MSE
of 128 fixed sequences every 50 iterations beside the all-zero and copy-last baselines.
--l1 0 drops the L1 term of the loss (the paper's loss is MSE + L1, --l1 1).

    python results/mmnist/blank-phase/blank_phase.py --size 32 --digits 1 --l1 1 --threads 1
"""
import argparse, json, time, sys
import numpy as np, torch
sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), "..", "..", ".."))
import lmc
from lmc.alignment import MemoryAlignment
from pipeline.sources.mmnist import load_digits, bouncing_sequence

p = argparse.ArgumentParser()
p.add_argument("--width", type=float, default=0.25)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--act", default="linear")
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--digits", type=int, default=2)
p.add_argument("--size", type=int, default=64)
p.add_argument("--seconds", type=float, default=600)
p.add_argument("--query", default="local")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--out", default="blank_phase.jsonl")
p.add_argument("--l1", type=float, default=1.0)
p.add_argument("--warm", type=int, default=0)
p.add_argument("--warm-len", type=int, default=3)
a = p.parse_args()
import lmc.alignment as A, torch.nn.functional as F
A.prediction_loss = lambda p, t: F.mse_loss(p, t) + a.l1 * F.l1_loss(p, t)
torch.set_num_threads(a.threads)
torch.manual_seed(0)
cfg = lmc.preset("tiny", width=a.width, convlstm_layers=a.layers, output_activation=a.act, lr=a.lr,
                 batch_size=a.batch, short_len=10, out_len=10, long_len=20, img_size=a.size,
                 memory_slots=32, query=a.query, warmup_iterations=a.warm, warmup_out_len=a.warm_len)
d = load_digits()
rng = np.random.default_rng(0)
def seqs(n, split, rng):
    x = torch.from_numpy(np.stack([bouncing_sequence(rng, d[split], 20, 64, a.digits) for _ in range(n)])[:, :, None]).float() / 255
    if a.size != 64:
        x = torch.nn.functional.avg_pool2d(x.flatten(0,1), 64 // a.size).unflatten(0, (n, 20))
    return x
test = seqs(128, "test", np.random.default_rng(1))
model = lmc.LMCModel(cfg)
al = MemoryAlignment(model)
def evaluate():
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(test[i:i+32, :10], out_len=10) for i in range(0, 128, 32)]).clamp(0, 1)
    model.train()
    tgt = test[:, 10:]
    mse = lambda x: float(((x - tgt) ** 2).sum(dim=(2, 3, 4)).mean())
    return mse(pred), mse(torch.zeros_like(tgt)), mse(test[:, 9:10].expand_as(tgt)), float(pred.mean())
t0 = time.time(); it = 0
f = open(a.out, "a")
tag = vars(a)
while time.time() - t0 < a.seconds:
    x = seqs(a.batch, "train", rng)
    l = al.step(x)
    it += 1
    if it % 50 == 0 or it == 1:
        m, z, c, pm = evaluate()
        rec = {"tag": {k: tag[k] for k in ("width","layers","act","lr","batch","digits","size","query","l1","warm")}, "it": it, "t": round(time.time()-t0), "loss": l, "mse": m, "zero": z, "copy": c, "pred_mean": pm}
        print(json.dumps(rec), flush=True); f.write(json.dumps(rec) + "\n"); f.flush()
