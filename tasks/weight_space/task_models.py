"""Weight-space task models: a feature extractor (a graph encoder, or a baseline) plus a task head.

Graph models use the ``l2o.encoders`` modules unchanged (built with ``build_encoder``); a task only adds a head:

* :class:`WeightSpaceClassifier`: pooled features -> MLP -> class logits; optionally an INR2JLS-style auxiliary
  decoder (Wu et al.'s DNG paper: a decoder reconstructs the image from the encoding, an extra loss that shapes the
  embedding; here an MLP from the pooled features to the ``H x W`` pixels, trained with MSE beside the
  cross-entropy).
* :class:`JointLatentClassifier`: INR2JLS (the DNG paper's joint latent space): the weights and, in training, the
  image the INR was fitted to are mapped into one latent space (the pooled features through an MLP; the image
  through a small CNN, :class:`ImageEncoder`), where one classifier head and one image decoder serve both. The
  image branch teaches the head and decoder what the latent should hold; an alignment loss pulls each INR's latent
  onto its image's. At test time only the weights are seen.
* :class:`AccuracyPredictor`: pooled features -> MLP -> one logit; ``sigmoid`` of it is the predicted accuracy.
* :class:`WeightSpaceEditor`: per-edge / per-node outputs of the encoder -> ``unscatter`` -> one delta per
  parameter element (equivariant to hidden-neuron permutations); edited parameters = parameters + delta.

Feature extractors (``[B, out_dim]`` per batch, :func:`build_features`):

* :class:`PooledGraph`: encoder -> :class:`Readout`: the mean of hidden and output node embeddings, the mean of
  edge embeddings (``graph_readout``), and the embeddings of the output neurons in their fixed order (output
  neurons are not permutable, so concatenating them keeps invariance; the output neurons of an INR are where the
  image comes out: one for a gray-scale SIREN, three (R, G, B) for a CIFAR-10 one). Invariant to hidden-neuron
  permutations.
* :class:`FlatMLP`: the normalised flat parameters (zero padded to the longest architecture) -> MLP. Not invariant:
  the baseline the graph encoders must beat.
* :class:`StatNN`: per-tensor statistics (Unterthiner et al. 2020; ``batching.statnn_features``) -> MLP.
  Invariant by construction. It has no per-weight output, so it does not apply to editing.

Probe features (:class:`ProbeFeatures`, INRs only): ``n`` learned input points (coordinates in ``[-1, 1]^2``); the
INR of every member runs on them and each neuron's activation at the points (post-activation for hidden neurons,
the raw output for output neurons, the coordinates for input nodes) is appended to its node feature, so the
encoder's input projection maps them into the node state. A neuron's probe values move with the neuron under a
permutation, so the model stays invariant / equivariant. Each node gets ``n`` values whatever the architecture;
an RGB SIREN has three output nodes (one per channel), so its probe features carry ``3 n`` output values where a
gray-scale SIREN's carry ``n``.

Encoder options (:func:`check_encoder_options`): a graph encoder's own constructor switches (DNG's ``recurrence``,
``bidirectional``, ``aggregation``, ...; NG-GNN's ``bidirectional``, ...) pass through :class:`GraphBackbone` and
:func:`build_features` to ``build_encoder`` unchanged. The sizes (``hidden``, ``depth``, ``kmax``) and input widths
are set by the task, so they are not options.
"""
from __future__ import annotations

import inspect
import json

import torch
import torch.nn as nn

from l2o.encoders import ENCODERS, build_encoder, graph_readout
from l2o.graph import ROLE_OUTPUT, NeuralGraph
from l2o.graph.activations import module_activation

from .batching import WeightBatch, rows_to_params

__all__ = ["MLP", "EncoderOptionError", "encoder_option_names", "check_encoder_options", "ProbeFeatures",
           "Readout", "GraphBackbone", "PooledGraph", "FlatMLP", "StatNN",
           "WeightSpaceClassifier", "ImageEncoder", "JointLatentClassifier", "AccuracyPredictor", "WeightSpaceEditor",
           "FlatEditor", "build_features",
           "GRAPH_ENCODERS", "BASELINES"]

GRAPH_ENCODERS = ("ng-gnn", "ng-t", "dng", "nfn")
BASELINES = ("mlp", "statnn")
# Constructor arguments of an encoder that the task sets itself (never encoder options).
_TASK_SET = ("self", "node_in", "edge_in", "hidden", "depth", "kmax")


class EncoderOptionError(ValueError):
    """Encoder options that the named encoder does not take (unknown key, bad value, not JSON, not a graph encoder)."""


def encoder_option_names(name: str) -> tuple[str, ...]:
    """The option keys graph encoder ``name`` takes: its constructor's keyword arguments minus the sizes and input
    widths the task sets (``hidden``, ``depth``, ``kmax``, ``node_in``, ``edge_in``), sorted."""
    if name not in GRAPH_ENCODERS:
        raise EncoderOptionError(f"{name!r} is not a graph encoder; encoder options apply to "
                                 f"{', '.join(GRAPH_ENCODERS)}")
    params = inspect.signature(ENCODERS[name].__init__).parameters.values()
    return tuple(sorted(p.name for p in params if p.name not in _TASK_SET
                        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)))


def check_encoder_options(name: str, options: dict, hidden: int = 32, depth: int = 2, build: bool = True) -> None:
    """Raise :class:`EncoderOptionError` (naming the encoder and its valid keys) unless ``options`` are keyword
    arguments encoder ``name`` takes, with JSON values (they are stored in the run record) that its constructor
    accepts. With ``build``, the values are checked by building the encoder once at ``hidden`` / ``depth`` on a tiny
    input (the global random state is left as it was); without, only the keys and the JSON values."""
    if not isinstance(options, dict):
        raise EncoderOptionError(f"encoder options must be a dict, got {type(options).__name__}")
    if not options:
        return
    valid = encoder_option_names(name)
    unknown = sorted(k for k in options if k not in valid)
    if unknown:
        raise EncoderOptionError(f"encoder {name!r} has no option{'s' if len(unknown) > 1 else ''} "
                                 f"{', '.join(map(repr, unknown))}; valid keys: {', '.join(valid)}")
    for key, value in options.items():
        try:
            back = json.loads(json.dumps(value))
            same = back == value and type(back) is type(value)
        except (TypeError, ValueError):
            same = False
        if not same:
            raise EncoderOptionError(f"encoder {name!r} option {key}={value!r}: values must be JSON values (bool, "
                                     f"int, float, str, None, lists / dicts of them) to be stored in the run record")
    if not build:
        return
    with torch.random.fork_rng(devices=[]):
        try:
            build_encoder(name, 1, 1, hidden=hidden, depth=depth, kmax=1, **options)
        except (TypeError, ValueError) as exc:
            raise EncoderOptionError(f"encoder {name!r} rejects options {options}: {exc} "
                                     f"(valid keys: {', '.join(valid)})") from exc


class MLP(nn.Sequential):
    """``in -> hidden (SiLU) x layers-1 -> out``; ``zero_last`` starts the output at exactly zero."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, layers: int = 2, dropout: float = 0.0,
                 zero_last: bool = False):
        mods: list[nn.Module] = []
        d = in_dim
        for _ in range(layers - 1):
            mods += [nn.Linear(d, hidden), nn.SiLU()]
            if dropout:
                mods.append(nn.Dropout(dropout))
            d = hidden
        mods.append(nn.Linear(d, out_dim))
        super().__init__(*mods)
        if zero_last:
            nn.init.zeros_(mods[-1].weight)
            nn.init.zeros_(mods[-1].bias)


# ---------------------------------------------------------------------------------------------------------------- probes
class ProbeFeatures(nn.Module):
    """Per-neuron activations of an INR at ``n`` learned input points (module docstring).

    Args:
        template: the INR architecture: a chain of ``nn.Linear`` and elementwise activation modules (an
            ``nn.Sequential``, or a module whose ``net`` is one, as ``Siren``).
        graph: its single neural graph (layer names are the Linear module paths).
        n: number of probe points. init: ``"uniform"`` in ``[-1, 1]^in`` (seeded by the global RNG).
    Shapes: ``forward(batch) -> [N, n]`` node features aligned with ``batch.graph``.
    """

    def __init__(self, template: nn.Module, graph: NeuralGraph, n: int = 32):
        super().__init__()
        chain = []
        for name, mod in template.named_modules():
            if len(list(mod.children())):
                continue
            if isinstance(mod, nn.Linear):
                chain.append((name, "linear", None))
            elif module_activation(mod) is not None:
                chain.append((name, "act", mod))
            elif not isinstance(mod, (nn.Identity, nn.Dropout)):
                raise ValueError(f"probe features need a chain of Linear layers and activations; got {type(mod).__name__} "
                                 f"at {name!r}")
        layer_of = {info.name: info.index for info in graph.layers[0]}
        missing = [name for name, kind, _ in chain if kind == "linear" and name not in layer_of]
        if missing:
            raise ValueError(f"Linear layers {missing} are not node sets of the graph")
        first = next(template.get_submodule(name) for name, kind, _ in chain if kind == "linear")
        self.in_features = first.in_features
        self.graph = graph
        self.chain = [(name, kind) for name, kind, _ in chain]
        self.acts = nn.ModuleDict({name.replace(".", "_"): mod for name, kind, mod in chain if kind == "act"})
        self.layer_of = layer_of
        self.num_layers = graph.num_layers
        self.n = n
        self.points = nn.Parameter(torch.rand(n, self.in_features) * 2 - 1)

    def activations(self, params: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        """``{name: [B, *shape]}`` -> ``{graph layer: [B, n_points, width]}``."""
        B = next(iter(params.values())).shape[0]
        h = self.points.expand(B, -1, -1)
        out = {0: h}
        current = None
        for name, kind in self.chain:
            if kind == "linear":
                w, b = params[f"{name}.weight"], params.get(f"{name}.bias")
                h = torch.einsum("bpi,boi->bpo", h, w)
                if b is not None:
                    h = h + b[:, None, :]
                current = self.layer_of[name]
            else:
                h = self.acts[name.replace(".", "_")](h)
            out[current if current is not None else 0] = h
        return out

    def forward(self, batch: WeightBatch) -> torch.Tensor:
        acts = self.activations(rows_to_params(self.graph, batch.rows))
        g = batch.graph
        B, n = batch.size, self.n
        width = max(a.shape[-1] for a in acts.values())
        dense = batch.node.new_zeros(self.num_layers, B, width, n)
        for t, a in acts.items():
            dense[t, :, : a.shape[-1]] = a.transpose(1, 2)
        return dense[g.node_layer, g.node_graph, g.node_index]


# -------------------------------------------------------------------------------------------------------------- readout
class Readout(nn.Module):
    """Invariant pooling: ``[mean(hidden+output nodes), mean(edges), output-node embeddings]`` -> ``[G, (2+n_out) d]``."""

    def __init__(self, hidden: int, n_outputs: int):
        super().__init__()
        self.hidden, self.n_outputs = hidden, n_outputs
        self.out_dim = (2 + n_outputs) * hidden

    def forward(self, graph: NeuralGraph, node_emb: torch.Tensor, edge_emb: torch.Tensor) -> torch.Tensor:
        pooled = graph_readout(graph, node_emb, edge_emb, reduce="mean")
        G, d = graph.num_graphs, node_emb.shape[1]
        is_out = graph.node_role == ROLE_OUTPUT
        outs = node_emb.new_zeros(G, self.n_outputs, d)
        idx = graph.node_index[is_out]
        keep = idx < self.n_outputs
        outs = outs.index_put((graph.node_graph[is_out][keep], idx[keep]), node_emb[is_out][keep])
        return torch.cat([pooled, outs.flatten(1)], 1)


class GraphBackbone(nn.Module):
    """Graph encoder (``l2o.encoders``, unchanged) on the batch's node/edge features (+ probe features).

    ``options``: the encoder's own constructor switches (:func:`check_encoder_options`), passed to ``build_encoder``.
    """

    def __init__(self, encoder: str, kmax: int, hidden: int = 32, depth: int = 2, probes: ProbeFeatures | None = None,
                 channels: int = 1, **options):
        super().__init__()
        check_encoder_options(encoder, options, build=False)  # the build below checks the values
        self.probes, self.channels = probes, channels
        node_in = channels + (probes.n if probes is not None else 0)
        self.encoder = build_encoder(encoder, node_in, kmax * kmax * channels, hidden=hidden, depth=depth, kmax=kmax,
                                     **options)
        self.hidden = hidden

    def forward(self, batch: WeightBatch) -> tuple[torch.Tensor, torch.Tensor]:
        node = batch.node
        if self.probes is not None:
            node = torch.cat([node, self.probes(batch)], 1)
        return self.encoder(batch.graph, node, batch.edge)


class PooledGraph(nn.Module):
    """``batch -> [B, out_dim]``: encoder + :class:`Readout`."""

    def __init__(self, backbone: GraphBackbone, n_outputs: int):
        super().__init__()
        self.backbone = backbone
        self.readout = Readout(backbone.hidden, n_outputs)
        self.out_dim = self.readout.out_dim

    def forward(self, batch: WeightBatch) -> torch.Tensor:
        node_emb, edge_emb = self.backbone(batch)
        return self.readout(batch.graph, node_emb, edge_emb)


class FlatMLP(nn.Module):
    """Baseline: normalised flattened weights (zero padded to ``in_dim``) -> MLP -> ``[B, out_dim]``."""

    def __init__(self, in_dim: int, hidden: int = 256, layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(MLP(in_dim, hidden, hidden, layers, dropout), nn.SiLU())
        self.out_dim = hidden

    def forward(self, batch: WeightBatch) -> torch.Tensor:
        return self.net(batch.dense)


class StatNN(FlatMLP):
    """Baseline (Unterthiner et al. 2020): standardised per-layer weight/bias statistics -> MLP -> ``[B, out_dim]``."""

    def forward(self, batch: WeightBatch) -> torch.Tensor:
        return self.net(batch.stats)


def build_features(name: str, *, kmax: int, n_outputs: int, flat_dim: int, stat_dim: int, hidden: int = 32,
                   depth: int = 2, baseline_hidden: int = 256, probes: ProbeFeatures | None = None,
                   channels: int = 1, **encoder_options) -> nn.Module:
    """A feature extractor by name: a graph encoder (``ng-gnn``, ``ng-t``, ``dng``, ``nfn``), ``mlp`` or ``statnn``.

    ``encoder_options`` go to the graph encoder's constructor (:func:`check_encoder_options`); baselines take none."""
    if encoder_options and name not in GRAPH_ENCODERS:
        check_encoder_options(name, encoder_options)  # raises: not a graph encoder
    if name in GRAPH_ENCODERS:
        return PooledGraph(GraphBackbone(name, kmax, hidden, depth, probes, channels, **encoder_options), n_outputs)
    if name == "mlp":
        return FlatMLP(flat_dim, baseline_hidden)
    if name == "statnn":
        return StatNN(stat_dim, baseline_hidden)
    raise KeyError(f"unknown weight-space model {name!r}; choose from {GRAPH_ENCODERS + BASELINES}")


# ---------------------------------------------------------------------------------------------------------------- tasks
class WeightSpaceClassifier(nn.Module):
    """Features -> MLP -> class logits; optional auxiliary image decoder (INR2JLS-style).

    ``forward(batch) -> {"logits": [B, C]}`` plus ``"recon": [B, H*W]`` (pixels in [0, 1] after a sigmoid)
    when ``image_pixels`` is set.
    """

    def __init__(self, features: nn.Module, num_classes: int, head_hidden: int = 128, dropout: float = 0.0,
                 image_pixels: int = 0):
        super().__init__()
        self.features = features
        self.head = MLP(features.out_dim, head_hidden, num_classes, 2, dropout)
        self.decoder = MLP(features.out_dim, 256, image_pixels, 2) if image_pixels else None

    def forward(self, batch: WeightBatch) -> dict[str, torch.Tensor]:
        z = self.features(batch)
        out = {"logits": self.head(z)}
        if self.decoder is not None:
            out["recon"] = torch.sigmoid(self.decoder(z))
        return out


class ImageEncoder(nn.Module):
    """Images ``[B, C, H, W]`` in [0, 1] -> ``[B, out_dim]``: three 3x3 convolutions (32, 64, 128 channels, ReLU,
    2x2 max-pooling after the first two), a global average pool and a linear map. Any image size."""

    def __init__(self, channels: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(128, out_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images - 0.5)


class JointLatentClassifier(nn.Module):
    """INR2JLS: a latent space shared by the INRs' weights and their images (module docstring).

    ``z = LayerNorm(MLP(features(batch)))`` and, for images, ``LayerNorm(ImageEncoder(images))``, both ``[B, latent]``
    (the layer norm, without affine parameters, fixes the latent's scale, so that pulling two latents together
    cannot shrink both to zero). One head (latent -> logits) and one decoder (latent -> ``C x H x W`` pixels in
    [0, 1]) serve both branches.

    ``forward(batch, images=None) -> {"logits": [B, n_classes], "recon": [B, C*H*W], "z": [B, latent]}`` from the
    weights; with ``images`` (``[B, C, H, W]`` or ``[B, H, W]``, in [0, 1]) also ``"image_logits"``,
    ``"image_recon"`` and ``"image_z"`` from the images. The test prediction is ``"logits"``: weights only.
    """

    def __init__(self, features: nn.Module, num_classes: int, image_channels: int, image_shape: tuple[int, int],
                 latent: int = 128, head_hidden: int = 128, dropout: float = 0.0):
        super().__init__()
        if image_channels < 1 or len(image_shape) != 2 or min(image_shape) < 4:
            raise ValueError(f"INR2JLS needs the images of the INRs (channels >= 1, H, W >= 4), got "
                             f"{image_channels} channels of {tuple(image_shape)}")
        self.features = features
        self.image_channels = image_channels
        self.weight_to_latent = MLP(features.out_dim, 256, latent, 2)
        self.image_to_latent = ImageEncoder(image_channels, latent)
        self.norm = nn.LayerNorm(latent, elementwise_affine=False)
        self.head = MLP(latent, head_hidden, num_classes, 2, dropout)
        self.decoder = MLP(latent, 256, image_channels * image_shape[0] * image_shape[1], 2)

    def _decode(self, z: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}logits": self.head(z), f"{prefix}recon": torch.sigmoid(self.decoder(z)), f"{prefix}z": z}

    def forward(self, batch: WeightBatch, images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = self._decode(self.norm(self.weight_to_latent(self.features(batch))), "")
        if images is not None:
            if images.dim() == 3:
                images = images[:, None]
            if images.dim() != 4 or images.shape[1] != self.image_channels:
                raise ValueError(f"images must be [B, {self.image_channels}, H, W] (or [B, H, W] gray-scale), "
                                 f"got {tuple(images.shape)}")
            out.update(self._decode(self.norm(self.image_to_latent(images)), "image_"))
        return out


class AccuracyPredictor(nn.Module):
    """Features -> MLP -> logit; ``forward -> {"logit": [B], "pred": sigmoid(logit)}`` (accuracy in [0, 1])."""

    def __init__(self, features: nn.Module, head_hidden: int = 128, dropout: float = 0.0):
        super().__init__()
        self.features = features
        self.head = MLP(features.out_dim, head_hidden, 1, 2, dropout)

    def forward(self, batch: WeightBatch) -> dict[str, torch.Tensor]:
        logit = self.head(self.features(batch)).squeeze(-1)
        return {"logit": logit, "pred": torch.sigmoid(logit)}


class WeightSpaceEditor(nn.Module):
    """Equivariant per-weight edits: encoder -> per-edge ``[E, K]`` and per-node ``[N, 1]`` outputs -> ``unscatter``.

    Each edge's head sees ``[edge embedding, edge's own input features]``; each node's ``[node embedding, bias]``.
    The outputs are in normalised units and are multiplied by the normaliser's per-tensor std, so an output of 1 is
    one standard deviation of that layer. The last layers start at zero (the untrained editor is the identity).
    ``forward(batch) -> {"delta": [P_total], "rows": [B, P] edited parameters}``.
    """

    def __init__(self, backbone: GraphBackbone, head_hidden: int = 64):
        super().__init__()
        self.backbone = backbone
        d, K, C = backbone.hidden, backbone.encoder.kmax ** 2, backbone.channels
        self.edge_head = MLP(d + K * C, head_hidden, K, 2, zero_last=True)
        self.node_head = MLP(d + C, head_hidden, 1, 2, zero_last=True)

    def forward(self, batch: WeightBatch) -> dict[str, torch.Tensor]:
        node_emb, edge_emb = self.backbone(batch)
        g = batch.graph
        e_out = self.edge_head(torch.cat([edge_emb, batch.edge], 1))
        n_out = self.node_head(torch.cat([node_emb, batch.node[:, : self.backbone.channels]], 1))
        delta = g.unscatter_flat(n_out, e_out.reshape(g.num_edges, -1, 1)).squeeze(-1) * batch.std
        return {"delta": delta, "rows": batch.edited_rows(delta)}


class FlatEditor(nn.Module):
    """Baseline editor: flattened normalised weights -> MLP -> a flat delta per parameter (not equivariant)."""

    def __init__(self, in_dim: int, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.net = MLP(in_dim, hidden, in_dim, layers, zero_last=True)

    def forward(self, batch: WeightBatch) -> dict[str, torch.Tensor]:
        n = batch.rows.shape[1]
        delta = self.net(batch.dense)[:, :n] * batch.std_rows * batch.mask
        return {"delta": delta[batch.mask], "rows": batch.rows + delta}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
