"""Adam with a per-tensor learning rate proportional to the tensor's RMS at init (relative step), on validation."""
import sys, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from tasks import get_task
torch.set_num_threads(1)
def relative_adam(model, eta):
    """torch Adam with one group per tensor at lr = eta x the tensor's RMS now (call at init)."""
    return torch.optim.Adam([{"params": [p], "lr": eta * float(p.detach().pow(2).mean().sqrt())}
                             for p in model.parameters()])
def run(name, eta, seed=1000, steps=1000, live=False, task=None):
    task = task or get_task(name)  # relative_depth.py passes unregistered tasks
    torch.manual_seed(seed)
    m = task.make_model(seed)
    opt = relative_adam(m, eta)
    st = task.batches("train", seed=seed)
    for t in range(steps):
        if live:
            for g in opt.param_groups: g["lr"] = eta * float(g["params"][0].detach().pow(2).mean().sqrt())
        x, y = st.batch(t)
        loss = task.loss(m(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    return task.evaluate(m, "val")["acc"]
if __name__ == "__main__":
    for spec in sys.argv[1:]:
        name, eta, *rest = spec.split("@")
        print(spec, round(100 * run(name, float(eta), live=bool(rest)), 2), flush=True)
