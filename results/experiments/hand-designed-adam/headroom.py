import sys, math, torch, json
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from tasks import get_task
torch.set_num_threads(1)
task = get_task(sys.argv[1]); steps = 1000
def run(lr, sched, seed, split="val"):
    torch.manual_seed(seed)
    m = task.make_model(seed)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    st = task.batches("train", seed=seed)
    for t in range(steps):
        f = 1.0
        if sched == "cos": f = 0.5 * (1 + math.cos(math.pi * t / steps))
        if sched == "lin": f = 1 - t / steps
        if sched == "wcos": f = min(1.0, (t + 1) / 50) * 0.5 * (1 + math.cos(math.pi * t / steps))
        for g in opt.param_groups: g["lr"] = lr * f
        x, y = st.batch(t)
        loss = task.loss(m(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    return task.evaluate(m, split)["acc"]
for spec in sys.argv[2:]:
    lr, sched = spec.split(":")
    accs = [run(float(lr), sched, s) for s in (1000, 1001)]
    print(spec, [round(100*a, 2) for a in accs], flush=True)
