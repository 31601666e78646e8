"""Hand-designed Adam variants on CIFAR-10 validation (seed 1000, 1000 steps): is there headroom over Adam 3e-3?"""
import sys, math, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from tasks import get_task
torch.set_num_threads(1)
task = get_task("cifar10-conv"); steps = 1000
def run(spec, seed=1000):
    torch.manual_seed(seed)
    m = task.make_model(seed)
    ps = list(m.named_parameters())
    first = [p for n, p in ps if n.startswith("0.")]
    last = [p for n, p in ps if n.startswith("8.")]
    hid = [p for n, p in ps if not (n.startswith("0.") or n.startswith("8."))]
    lr, lr_in, lr_hid, lr_out, b2, warm = 3e-3, None, None, None, 0.999, 0
    for kv in spec.split(","):
        k, v = kv.split("="); v = float(v)
        if k == "lr": lr = v
        if k == "in": lr_in = v
        if k == "hid": lr_hid = v
        if k == "out": lr_out = v
        if k == "b2": b2 = v
        if k == "decay_to": warm = v
    groups = [{"params": first, "lr": lr_in or lr}, {"params": hid, "lr": lr_hid or lr}, {"params": last, "lr": lr_out or lr}]
    for g in groups: g["base"] = g["lr"]
    opt = torch.optim.Adam(groups, betas=(0.9, b2))
    st = task.batches("train", seed=seed)
    for t in range(steps):
        if warm:  # exponential decay from lr to `decay_to` x lr
            for g in opt.param_groups: g["lr"] = g["base"] * warm ** (t / steps)
        x, y = st.batch(t)
        loss = task.loss(m(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    return task.evaluate(m, "val")["acc"]
for spec in sys.argv[1:]:
    print(spec, round(100 * run(spec), 2), flush=True)
