"""nn.Module -> NeuralGraph, by walking the torch.fx trace of the model.

The walk keeps, for every traced value, which *node set* (layer of neurons) holds its channels / features.
Parametric layers create a new node set and edges into it; activations label a node set; pooling, dropout and
identity pass values through; a flatten is resolved when a ``Linear`` consumes it (``in_features / channels``
positions per channel); residual additions add identity edges. Choices made where the papers are silent:

* Inputs are created lazily when first consumed: a ``Conv`` makes one input node per channel, a ``Linear``
  (after a flatten of the raw input or not) one per input feature, so an image MLP has one input node per pixel.
* Flatten of a spatial map (``[C, H, W] -> C*H*W`` features) makes a new node set with one copy of each channel
  per spatial position, fed by identity edges (Kofinas et al., ICLR 2024: "repeat the last conv channels once per position");
  ``node_position`` tells the encoder which position a copy stands for.
* An activation is recorded on the node set that produced its input when that value is used by nothing else;
  otherwise (two activations in a row, an activation on an input, a value also used elsewhere) a copy node set
  with identity edges is made, so the graph never claims an activation where the network has none.
* ``a + b`` reuses ``a``'s (or ``b``'s) node set as the sum when that set was created after the other operand's
  set and its value is used only by the sum (the ResNet pattern ``bn(conv(x)) + x``); otherwise a new node set
  receives identity edges from both.
* Normalisation (BatchNorm, LayerNorm over features, GroupNorm) is a new node set with diagonal ``gamma`` edges and
  ``beta`` biases; without affine parameters the diagonal edges are identity edges. Running statistics are not
  represented (they are buffers, not parameters).
* ``softmax`` / ``log_softmax`` directly before the output are ignored (they do not change the argmax and have no
  parameters).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .activations import (FUNCTION_ACTIVATIONS, METHOD_ACTIVATIONS, activation_id, is_activation_module_type,
                          module_activation)
from .errors import UnsupportedModuleError
from .neural_graph import (EDGE_IDENTITY, EDGE_NORM, EDGE_WEIGHT, ROLE_HIDDEN, ROLE_INPUT, ROLE_OUTPUT, LayerInfo,
                           NeuralGraph)

_PASS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.MaxPool1d, nn.MaxPool2d,
                 nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d,
                 nn.AdaptiveMaxPool2d)
# Every common spelling of pooling and dropout: F.* and the torch.* aliases (the PyTorch examples write
# torch.max_pool2d); names missing from a torch version are skipped.
_PASS_NAMES = ("dropout", "dropout1d", "dropout2d", "alpha_dropout", "feature_dropout", "max_pool1d", "max_pool2d",
               "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d",
               "adaptive_max_pool2d", "max_pool1d_with_indices", "max_pool2d_with_indices")
_PASS_FUNCTIONS = {f for ns in (F, torch) for name in _PASS_NAMES if (f := getattr(ns, name, None)) is not None}
_PASS_METHODS = {"contiguous", "clone", "detach"}
_OUTPUT_FUNCTIONS = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax}
_NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


@dataclass(eq=False)
class _NodeSet:
    order: int  # creation order (inputs are re-ranked first at the end)
    size: int
    kind: str
    name: str
    activation: str = "identity"
    positions: torch.Tensor | None = None  # [size] spatial position of each copy (flatten), else None
    role: int = ROLE_HIDDEN


@dataclass(eq=False)
class _Value:
    """What the walker knows about one traced value."""

    nodes: _NodeSet | None  # None: a model input whose size is not known yet
    spatial: int | None  # number of spatial dims (None: unknown)
    flat: bool = False  # flattened (channels x positions) but not yet consumed by a Linear
    pristine: bool = False  # equals the pre-activation output of ``nodes`` and is used only once so far
    placeholder: str = ""


@dataclass
class _EdgeBlock:
    src: _NodeSet
    dst: _NodeSet
    src_local: torch.Tensor  # [m]
    dst_local: torch.Tensor  # [m]
    kind: int


@dataclass
class _ParamMap:
    name: str
    shape: torch.Size
    block: _EdgeBlock | None = None  # weights: edges of this block
    edge_local: torch.Tensor | None = None  # [numel] edge (within block) of each element
    kpos: torch.Tensor | None = None  # [numel] kernel slot of each element
    node_set: _NodeSet | None = None  # biases: nodes of this set
    node_local: torch.Tensor | None = None  # [numel]


class _Tracer(fx.Tracer):
    """Standard leaves plus registered activation modules (a SIREN's ``Sine`` stays one call)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_activation_module_type(type(m)) or super().is_leaf_module(m, qualname)


@dataclass
class _Walker:
    kmax: int
    sets: list[_NodeSet] = field(default_factory=list)
    blocks: list[_EdgeBlock] = field(default_factory=list)
    pmaps: list[_ParamMap] = field(default_factory=list)
    used_params: set = field(default_factory=set)

    # -------------------------------------------------------------- primitives
    def new_set(self, size: int, kind: str, name: str, positions=None, role=ROLE_HIDDEN) -> _NodeSet:
        s = _NodeSet(order=len(self.sets), size=size, kind=kind, name=name, positions=positions, role=role)
        self.sets.append(s)
        return s

    def connect(self, src: _NodeSet, dst: _NodeSet, src_local, dst_local, kind: int) -> _EdgeBlock:
        b = _EdgeBlock(src, dst, torch.as_tensor(src_local, dtype=torch.long),
                       torch.as_tensor(dst_local, dtype=torch.long), kind)
        self.blocks.append(b)
        return b

    def identity_edges(self, src: _NodeSet, dst: _NodeSet) -> None:
        idx = torch.arange(src.size)
        self.connect(src, dst, idx, idx, EDGE_IDENTITY)

    def claim(self, name: str, path: str, kind: str) -> None:
        if name in self.used_params:
            raise UnsupportedModuleError(path, kind, f"parameter '{name}' is used more than once (weight sharing)",
                                         "Tied weights have no single place on the neural graph.")
        self.used_params.add(name)

    def resolve_input(self, v: _Value, size: int, spatial: int | None) -> None:
        """Create the node set of a model input on first use."""
        if v.nodes is None:
            v.nodes = self.new_set(size, "input", v.placeholder, role=ROLE_INPUT)
            v.spatial = spatial if not v.flat else 0

    # -------------------------------------------------------------- layers
    def linear(self, v: _Value, weight: torch.Tensor, bias, path: str, wname: str, bname: str | None,
               kind: str = "Linear") -> _Value:
        out_f, in_f = weight.shape
        if v.nodes is None:
            self.resolve_input(v, in_f, 0)
        elif v.spatial and not v.flat:
            raise UnsupportedModuleError(path, kind, "a Linear applied to a spatial map mixes only its last axis",
                                         "Flatten or pool the map before the Linear layer.")
        src = v.nodes
        if src.size != in_f:
            if not v.flat or in_f % src.size:
                raise UnsupportedModuleError(path, kind, f"expects {in_f} inputs but receives {src.size} "
                                             f"{'channels' if v.flat else 'features'}")
            # Flatten of a spatial map: one copy of each channel per position, feature f = c * HW + p.
            hw = in_f // src.size
            f = torch.arange(in_f)
            copies = self.new_set(in_f, "flatten", path + ".flatten", positions=f % hw)
            self.connect(src, copies, f // hw, f, EDGE_IDENTITY)
            src = copies
        return self.dense(src, weight.shape, 1, bias, path, wname, bname, kernel=None)

    def conv(self, v: _Value, mod_weight: torch.Tensor, bias, groups: int, path: str, wname: str,
             bname: str | None, kind: str) -> _Value:
        out_c, in_per_group = mod_weight.shape[:2]
        ksize = tuple(mod_weight.shape[2:])
        spatial = len(ksize)
        if max(ksize) > self.kmax:
            raise UnsupportedModuleError(path, kind, f"kernel {ksize} is larger than kmax={self.kmax}",
                                         f"Build the graph with kmax >= {max(ksize)}.")
        if v.nodes is None:
            self.resolve_input(v, in_per_group * groups, spatial)
        if v.flat or (v.spatial is not None and v.spatial != spatial):
            raise UnsupportedModuleError(path, kind, f"input has {v.spatial} spatial dims, the conv expects {spatial}")
        if v.nodes.size != in_per_group * groups:
            raise UnsupportedModuleError(path, kind, f"expects {in_per_group * groups} channels, receives {v.nodes.size}")
        return self.dense(v.nodes, mod_weight.shape, groups, bias, path, wname, bname, kernel=ksize, spatial=spatial)

    def dense(self, src: _NodeSet, wshape, groups: int, bias, path: str, wname: str, bname: str | None,
              kernel: tuple | None, spatial: int = 0) -> _Value:
        """Edges (o, i) for every output o and input i of its group; element (o, i, *k) sits on edge (o, i)."""
        out_c, in_pg = wshape[0], wshape[1]
        dst = self.new_set(out_c, "conv" if kernel else "linear", path)
        o = torch.arange(out_c).repeat_interleave(in_pg)
        i = torch.arange(in_pg).repeat(out_c)
        src_ch = (o // (out_c // groups)) * in_pg + i
        block = self.connect(src, dst, src_ch, o, EDGE_WEIGHT)
        kh, kw = (1, 1) if kernel is None else ((1,) + kernel if len(kernel) == 1 else kernel)
        c = (self.kmax - 1) // 2
        r0 = c if kernel is None or len(kernel) == 1 else (self.kmax - kh) // 2
        c0 = (self.kmax - kw) // 2
        a, b = torch.meshgrid(torch.arange(kh), torch.arange(kw), indexing="ij")
        kpos_kernel = ((r0 + a) * self.kmax + (c0 + b)).reshape(-1)  # [kh*kw], row-major like the weight
        n_edges, kk = out_c * in_pg, kh * kw
        self.pmaps.append(_ParamMap(wname, torch.Size(wshape), block=block,
                                    edge_local=torch.arange(n_edges).repeat_interleave(kk),
                                    kpos=kpos_kernel.repeat(n_edges)))
        if bias is not None:
            self.pmaps.append(_ParamMap(bname, bias.shape, node_set=dst, node_local=torch.arange(out_c)))
        return _Value(dst, spatial, pristine=True)

    def norm(self, v: _Value, mod: nn.Module, path: str) -> _Value:
        kind = type(mod).__name__
        if v.nodes is None:
            raise UnsupportedModuleError(path, kind, "normalisation applied directly to a model input",
                                         "Put a Linear/Conv layer first, or normalise the data outside the model.")
        C = v.nodes.size
        if isinstance(mod, nn.LayerNorm):
            if tuple(mod.normalized_shape) != (C,) or v.spatial:
                raise UnsupportedModuleError(path, kind, f"normalized_shape {tuple(mod.normalized_shape)} is not the "
                                             f"feature axis ({C},) of a non-spatial value",
                                             "Only LayerNorm over the features of a Linear output is supported.")
            affine = mod.elementwise_affine
        elif isinstance(mod, nn.GroupNorm):
            affine = mod.affine
        else:
            affine = mod.affine
        dst = self.new_set(C, "norm", path)
        idx = torch.arange(C)
        weight = getattr(mod, "weight", None) if affine else None
        bias = getattr(mod, "bias", None) if affine else None
        if weight is not None:
            wname = f"{path}.weight"
            self.claim(wname, path, kind)
            block = self.connect(v.nodes, dst, idx, idx, EDGE_NORM)
            c = (self.kmax - 1) // 2
            self.pmaps.append(_ParamMap(wname, weight.shape, block=block, edge_local=idx,
                                        kpos=torch.full((C,), c * self.kmax + c)))
        else:
            self.identity_edges(v.nodes, dst)
        if bias is not None:
            bname = f"{path}.bias"
            self.claim(bname, path, kind)
            self.pmaps.append(_ParamMap(bname, bias.shape, node_set=dst, node_local=idx))
        return _Value(dst, v.spatial, pristine=True)

    def activation(self, v: _Value, act: str, node: fx.Node, path: str) -> _Value:
        if v.nodes is None:
            raise UnsupportedModuleError(path, act, "activation applied directly to a model input")
        s = v.nodes
        if v.pristine and len(node.args[0].users) == 1 and s.activation == "identity" and s.role != ROLE_INPUT:
            s.activation = act
            return _Value(s, v.spatial, v.flat)
        copy = self.new_set(s.size, "copy", path, positions=s.positions)
        copy.activation = act
        self.identity_edges(s, copy)
        return _Value(copy, v.spatial, v.flat)

    def add(self, a: _Value, b: _Value, node: fx.Node) -> _Value:
        path = node.name
        if a.nodes is None or b.nodes is None:
            raise UnsupportedModuleError(path, "add", "a model input is added without a layer in between")
        if a.nodes is b.nodes:
            raise UnsupportedModuleError(path, "add", "a value is added to itself (a scaling, not a residual)")
        if a.nodes.size != b.nodes.size or a.flat or b.flat:
            raise UnsupportedModuleError(path, "add", f"operands have {a.nodes.size} and {b.nodes.size} channels")
        for tgt, other, arg in ((a, b, node.args[0]), (b, a, node.args[1])):
            if (tgt.pristine and len(arg.users) == 1 and tgt.nodes.order > other.nodes.order
                    and tgt.nodes.activation == "identity"):
                self.identity_edges(other.nodes, tgt.nodes)
                return _Value(tgt.nodes, tgt.spatial, pristine=True)
        out = self.new_set(a.nodes.size, "residual", path, positions=a.nodes.positions)
        self.identity_edges(a.nodes, out)
        self.identity_edges(b.nodes, out)
        return _Value(out, a.spatial, pristine=True)

    # -------------------------------------------------------------- finish
    def assemble(self, outputs: list[_Value], unmapped: list[str]) -> NeuralGraph:
        for v in outputs:
            if v.nodes is None or v.nodes.role == ROLE_INPUT:
                raise UnsupportedModuleError("<output>", "output", "the model returns its input unchanged")
            v.nodes.role = ROLE_OUTPUT
        used = [s for s in self.sets]
        # Inputs first (layer 0), then every other node set in creation order, which is topological.
        inputs = [s for s in used if s.role == ROLE_INPUT]
        others = [s for s in used if s.role != ROLE_INPUT]
        layer_of = {id(s): 0 for s in inputs}
        layer_of.update({id(s): i + 1 for i, s in enumerate(others)})
        ordered = inputs + others
        offset, n = {}, 0
        for s in ordered:
            offset[id(s)] = n
            n += s.size
        cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0, dtype=torch.long)  # noqa: E731
        node_layer = cat([torch.full((s.size,), layer_of[id(s)]) for s in ordered])
        node_role = cat([torch.full((s.size,), s.role) for s in ordered])
        node_act = cat([torch.full((s.size,), activation_id(s.activation)) for s in ordered])
        node_index = cat([torch.arange(s.size) for s in ordered])
        node_pos = cat([s.positions if s.positions is not None else torch.full((s.size,), -1) for s in ordered])
        K = self.kmax * self.kmax
        blk_off, e = {}, 0
        for b in self.blocks:
            blk_off[id(b)] = e
            e += b.src_local.numel()
        if self.blocks:
            src = torch.cat([b.src_local + offset[id(b.src)] for b in self.blocks])
            dst = torch.cat([b.dst_local + offset[id(b.dst)] for b in self.blocks])
            edge_kind = torch.cat([torch.full((b.src_local.numel(),), b.kind) for b in self.blocks])
        else:
            src = dst = edge_kind = torch.zeros(0, dtype=torch.long)
        edge_constant = torch.zeros(e, K)
        c = (self.kmax - 1) // 2
        edge_constant[edge_kind == EDGE_IDENTITY, c * self.kmax + c] = 1.0
        slots = []
        for p in self.pmaps:
            if p.block is not None:
                slots.append(n + (blk_off[id(p.block)] + p.edge_local) * K + p.kpos)
            else:
                slots.append(offset[id(p.node_set)] + p.node_local)
        layers = [LayerInfo(layer_of[id(s)], s.kind, s.name, s.size, s.activation) for s in ordered]
        return NeuralGraph.assemble(
            kmax=self.kmax, node_layer=node_layer, node_role=node_role, node_activation=node_act,
            node_index=node_index, node_position=node_pos, edge_index=torch.stack([src, dst]), edge_kind=edge_kind,
            edge_constant=edge_constant, slot=cat(slots), param_names=[p.name for p in self.pmaps],
            param_shapes=[p.shape for p in self.pmaps], layers=[layers], unmapped_params=unmapped,
        )


def _max_kernel(model: nn.Module) -> int:
    k = 1
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            k = max(k, *m.kernel_size)
    return k


def _is_flatten_shape(args) -> bool:
    """``x.view(B, -1)``, ``x.reshape(-1, F)``, ``x.view(x.size(0), -1)``: a 2-d reshape that keeps the batch."""
    shape = args[1:]
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return len(shape) == 2


def build_graph(model: nn.Module, example_input: torch.Tensor | None = None, kmax: int | None = None,
                on_unsupported: str = "raise") -> NeuralGraph:
    """See :meth:`NeuralGraph.from_module`."""
    if on_unsupported not in ("raise", "skip"):
        raise ValueError(f"on_unsupported must be 'raise' or 'skip', got {on_unsupported!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"NeuralGraph.from_module expects an nn.Module, got {type(model).__name__}")
    model = getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model
    kmax = kmax or _max_kernel(model)
    try:
        fx_graph = _Tracer().trace(model)
    except Exception as exc:  # tracing failures come in many types; all mean the same to the user
        raise UnsupportedModuleError("<model>", type(model).__name__, f"torch.fx could not trace forward(): {exc}",
                                     "Remove data-dependent control flow from forward(), or mark the offending "
                                     "submodule as a leaf; NeuralGraphOptimizer(..., fallback='per-parameter') "
                                     "updates such a model without the graph.") from exc
    if example_input is not None:
        with torch.no_grad():
            model(example_input)  # surfaces shape errors before the (shape-free) walk
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    w = _Walker(kmax)
    env: dict[fx.Node, object] = {}

    def val(a):
        return env.get(a) if isinstance(a, fx.Node) else a

    outputs: list[_Value] = []
    skipped: list[str] = []
    for node in fx_graph.nodes:
        if node.op == "output":
            res = val(node.args[0])
            res = list(res) if isinstance(res, (tuple, list)) else [res]
            outputs = [val(r) if isinstance(r, fx.Node) else r for r in res]
            if not all(isinstance(o, _Value) for o in outputs):
                raise UnsupportedModuleError("<output>", "output", "the model returns something other than tensors "
                                             "computed from its input")
            continue
        claimed_before = set(w.used_params)
        try:
            env[node] = _visit(w, node, [val(a) for a in node.args], modules, params)
        except UnsupportedModuleError as exc:
            if on_unsupported != "skip" or node.op not in ("call_module", "call_function", "call_method"):
                raise
            # Leave this part off the graph: its parameters stay unmapped (updated without the graph by the
            # optimizer's per-parameter fallback) and its output enters the graph as new input nodes.
            w.used_params = claimed_before
            skipped.append(f"{exc.path} ({exc.kind})")
            env[node] = _Value(None, None, placeholder=f"{exc.path}.out")
    unmapped = [n for n in params if n not in w.used_params]
    graph = w.assemble(outputs, unmapped)
    graph.skipped_modules = skipped
    return graph


def _visit(w: _Walker, node: fx.Node, args: list, modules: dict, params: dict) -> object:
    """The walker's value for one traced node (placeholder, get_attr or call_*)."""
    op, target = node.op, node.target
    if op == "placeholder":
        return _Value(None, None, placeholder=node.name)
    if op == "get_attr":
        return ("param", target)
    if op == "call_function":
        return _call_function(w, node, target, args, params)
    if op == "call_method":
        return _call_method(w, node, target, args)
    mod, path = modules[target], target
    kind = type(mod).__name__
    x = args[0] if args else None
    if not isinstance(x, _Value):
        raise UnsupportedModuleError(path, kind, "input is not a traced activation tensor")
    if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        w.claim(f"{path}.weight", path, kind)
        bname = f"{path}.bias" if mod.bias is not None else None
        if bname:
            w.claim(bname, path, kind)
        if isinstance(mod, nn.Linear):
            return w.linear(x, mod.weight, mod.bias, path, f"{path}.weight", bname)
        return w.conv(x, mod.weight, mod.bias, mod.groups, path, f"{path}.weight", bname, kind)
    if isinstance(mod, _NORM_MODULES):
        return w.norm(x, mod, path)
    if (act := module_activation(mod)) is not None:
        if any(True for _ in mod.parameters()):
            raise UnsupportedModuleError(path, kind, "activation with learnable parameters")
        return w.activation(x, act, node, path)
    if isinstance(mod, _PASS_MODULES):
        return _pass(x, node)
    if isinstance(mod, nn.Flatten):
        if mod.start_dim != 1 or mod.end_dim != -1:
            raise UnsupportedModuleError(path, kind, "only Flatten(start_dim=1, end_dim=-1) is supported")
        return _flatten(x)
    raise UnsupportedModuleError(path, kind, "no neural-graph rule for this layer type",
                                 "Supported: Linear, Conv1d/2d, BatchNorm/LayerNorm/GroupNorm, activations, pooling, "
                                 "dropout, flatten, residual additions; NeuralGraphOptimizer(..., "
                                 "fallback='per-parameter') updates such layers without the graph.")


def _flatten(x: _Value) -> _Value:
    return _Value(x.nodes, 0, flat=True, placeholder=x.placeholder) if x.nodes is not None else _flatten_input(x)


def _flatten_input(x: _Value) -> _Value:
    return _Value(None, 0, flat=True, placeholder=x.placeholder) if x.nodes is None else x


def _pass(x: _Value, node: fx.Node) -> _Value:
    """Pooling, dropout, identity: same neurons. Global pooling keeps the (now 1x1) spatial dims."""
    pristine = x.pristine and len(node.args[0].users) == 1
    return _Value(x.nodes, x.spatial, x.flat, pristine, x.placeholder)


def _call_function(w: _Walker, node: fx.Node, target, args, params) -> object:
    name = node.name
    if target in (operator.add, torch.add):
        a, b = args[0], args[1]
        if not (isinstance(a, _Value) and isinstance(b, _Value)):
            raise UnsupportedModuleError(name, "add", "adds a constant or a parameter to an activation",
                                         "Only residual additions of two activations are supported.")
        return w.add(a, b, node)
    if target in FUNCTION_ACTIVATIONS:
        return w.activation(args[0], FUNCTION_ACTIVATIONS[target], node, name)
    if target in _PASS_FUNCTIONS:
        return _pass(args[0], node)
    if target in _OUTPUT_FUNCTIONS:
        if not all(u.op == "output" for u in node.users):
            raise UnsupportedModuleError(name, getattr(target, "__name__", str(target)),
                                         "softmax is only allowed directly before the output")
        return args[0]
    if target is torch.flatten:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        if start != 1:
            raise UnsupportedModuleError(name, "flatten", "only flatten(x, 1) (keeping the batch axis) is supported")
        return _flatten(args[0])
    if target in (F.linear, F.conv1d, F.conv2d):
        x, wref = args[0], args[1]
        bref = args[2] if len(args) > 2 else node.kwargs.get("bias")
        if not (isinstance(wref, tuple) and wref[0] == "param"):
            raise UnsupportedModuleError(name, target.__name__, "weight is not a parameter of the model")
        wname = wref[1]
        bname = bref[1] if isinstance(bref, tuple) else None
        weight = params.get(wname)
        bias = params.get(bname) if bname else None
        if weight is None:
            raise UnsupportedModuleError(name, target.__name__, f"'{wname}' is not a parameter of the model")
        w.claim(wname, name, target.__name__)
        if bname:
            w.claim(bname, name, target.__name__)
        if target is F.linear:
            return w.linear(x, weight, bias, name, wname, bname, kind="F.linear")
        groups = node.kwargs.get("groups", args[6] if len(args) > 6 else 1)
        return w.conv(x, weight, bias, groups, name, wname, bname, target.__name__)
    fname = getattr(target, "__name__", str(target))
    raise UnsupportedModuleError(name, fname, "no neural-graph rule for this function",
                                 "Supported functions: F.linear/conv1d/conv2d, activations, pooling, dropout, "
                                 "flatten, softmax at the output, residual additions (each as torch.*, F.* or a "
                                 "tensor method). Use a supported spelling, or pass fallback='per-parameter' to "
                                 "NeuralGraphOptimizer to cut the graph at this function.")


def _call_method(w: _Walker, node: fx.Node, method: str, args) -> object:
    x = args[0]
    if method == "size" or method == "dim":
        return ("meta", method)
    if not isinstance(x, _Value):
        raise UnsupportedModuleError(node.name, f"Tensor.{method}", "called on something that is not an activation")
    if method in METHOD_ACTIVATIONS:
        return w.activation(x, METHOD_ACTIVATIONS[method], node, node.name)
    if method in _PASS_METHODS:
        return _pass(x, node)
    if method in ("softmax", "log_softmax"):
        return _call_function(w, node, F.softmax, args, {})
    if method == "add":
        return _call_function(w, node, operator.add, args, {})
    if method == "flatten":
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        if start != 1:
            raise UnsupportedModuleError(node.name, "Tensor.flatten", "only flatten(1) (keeping the batch axis)")
        return _flatten(x)
    if method in ("view", "reshape") and _is_flatten_shape(node.args):
        return _flatten(x)
    if method in ("mean", "amax", "sum") and x.nodes is not None:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        keep = node.kwargs.get("keepdim", False)
        spatial = x.spatial or 0
        ok = dims and all((d >= 2) or (-spatial <= d < 0) for d in dims) and method != "sum"
        if ok:
            return _Value(x.nodes, spatial if keep else spatial - len(dims), x.flat, False, x.placeholder)
    raise UnsupportedModuleError(node.name, f"Tensor.{method}", "no neural-graph rule for this method")
