import sys; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
import torch
from l2o.optim import OptimizerConfig, build_optimizer
from meta_train.inner_train import train_optimizee
from tasks.registry import conv_task
torch.set_num_threads(1)
for spec in sys.argv[1:]:
    bs, lr = spec.split("@")
    task = conv_task("fashion-mnist", (16, 32, 32), batch_size=int(bs))
    r = train_optimizee(build_optimizer(OptimizerConfig(family="adam", lr=float(lr))), task, 1000, seed=1000, eval_split="val")
    print(spec, round(100 * r["acc"], 2), flush=True)
