import torch
from l2o.encoders import ENCODERS
from l2o.encoders.nfn import NFNEncoder
class NotEquivariant(NFNEncoder):
    def forward(self, graph, n, e):
        x, y = super().forward(graph, n, e)
        return x + 1e-3 * torch.arange(x.shape[0], dtype=x.dtype)[:, None], y
class NotBatchable(NFNEncoder):
    def forward(self, graph, n, e):
        x, y = super().forward(graph, n, e)
        return x + 1e-3 * x.mean(0), y
ENCODERS['zz-noneq'] = NotEquivariant
ENCODERS['zz-nobatch'] = NotBatchable
