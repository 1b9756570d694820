"""Route a model's parameters by role and wrap the optimizers in one object.

Block 2-D weights and convolution weights (as (out, in x kernel) matrices) go to the matrix
optimizer (one of the family in `optim.OPTIMIZER_CLASSES`, or AdamW); embeddings (a first convolution,
the patch embedding, included), the output head, norm gains and biases go to the scalar optimizer
(AdamW or Lion). Embedding and head are never sent to Mousse: treating them as matrices silently
trains badly (docs/family.md). Weights stored (in, out), as transformers' GPT-2 `Conv1D` stores
them, are optimized as the (out, in) matrices they are (`infer_transposed`).
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast, get_args, overload

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .family import Knobs, closure_loss
from .knobs import KnobArgs
from .lion import Lion
from .recipes import OPTIMIZER_CLASSES
from .step import oriented_shape

if TYPE_CHECKING:
    from torch.optim.optimizer import StateDict

# What the embeddings, head, gains and biases get (`build_optimizer`'s scalar_optimizer).
ScalarOptimizer = Literal["adamw", "lion"]

ROLES = ("matrix", "embedding", "head", "scalar")
_HEAD_NAMES = ("lm_head", "head", "output", "unembed", "classifier")
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def infer_roles(model: nn.Module) -> dict[str, str]:
    """Role of each trainable parameter: the model's own `param_roles()` when it has one, else
    by module: nn.Embedding weights are embeddings; the head is the Linear named like one
    (lm_head, head, output, ...), else the last Linear whose output size is the vocabulary, else
    the last Linear; the first convolution's weight (a patch embedding: it reads the raw input)
    is an embedding and the other convolution weights are matrices; other 2-D weights are
    matrices and everything else is scalar. The routing table returned by `build_optimizer`
    shows the result, so a user can check it."""
    if hasattr(model, "param_roles"):
        return dict(cast(Any, model).param_roles())  # Any: the user's own method on an nn.Module
    vocab = {m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)}
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    named = [n for n, _ in linears if n.rsplit(".", 1)[-1] in _HEAD_NAMES]
    by_vocab = [n for n, m in linears if m.out_features in vocab]
    head = (named or by_vocab or [n for n, _ in linears] or [None])[-1]
    patch = next((n for n, m in model.named_modules() if isinstance(m, CONVOLUTIONS)), None)
    roles = {}
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            name = f"{mod_name}.{p_name}" if mod_name else p_name
            if isinstance(module, nn.Embedding) or (mod_name == patch and p_name == "weight"):
                roles[name] = "embedding"
            elif isinstance(module, CONVOLUTIONS) and p_name == "weight":
                roles[name] = "matrix"
            elif mod_name == head and p_name == "weight":
                roles[name] = "head"
            else:
                roles[name] = "matrix" if p.ndim == 2 else "scalar"
    return roles


def infer_transposed(model: nn.Module) -> set[str]:
    """Names of the weights stored (in, out) rather than (out, in): those of transformers'
    `Conv1D` (GPT-2's layers; recognized by class, without importing transformers) and of any
    module that says `fan_in_fan_out = True` (the mark PEFT uses for such layers). The family
    optimizer optimizes each as the (out, in) matrix it is."""
    return {
        f"{mod_name}.weight" if mod_name else "weight"
        for mod_name, module in model.named_modules()
        if "weight" in dict(module.named_parameters(recurse=False)) and _stores_in_out(module)
    }


def routed_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The shape of each trainable block matrix (role 'matrix') as the family optimizer sees it,
    (out, in, k...): weights stored (in, out) turned, for plans and benchmarks that cost them."""
    roles, flipped = infer_roles(model), infer_transposed(model)
    return {
        n: oriented_shape(p.shape, n in flipped)
        for n, p in model.named_parameters()
        if p.requires_grad and roles.get(n) == "matrix"
    }


def _stores_in_out(module: nn.Module) -> bool:
    """Whether a module's weight is stored (in, out): a transformers Conv1D, or marked so."""
    hf_conv1d = any(
        c.__name__ == "Conv1D" and c.__module__.startswith("transformers")
        for c in type(module).__mro__
    )
    return hf_conv1d or getattr(module, "fan_in_fan_out", False) is True


@dataclass(frozen=True)
class Route:
    """Where one parameter went, for the user to check; `transposed`: the weight is stored
    (in, out) and optimized as the (out, in) matrix it is."""

    name: str
    shape: tuple[int, ...]
    role: str
    optimizer: str
    lr: float
    transposed: bool = False


class CombinedOptimizer(Optimizer):
    """One standard `torch.optim.Optimizer` over a whole model, as AdamW is: its `param_groups`
    are those of the optimizer running each rule (each group's "rule": "matrix", the family
    optimizer or AdamW, or "scalar", AdamW or Lion, which `parts` holds by rule), and its `state`
    is theirs, one dict shared with them. So `state_dict()` has torch's `state` / `param_groups`
    form (what torch.distributed.checkpoint, LR schedulers, GradScaler and HF Trainer read) and
    `step()` runs each rule's optimizer on its own groups. `load_state_dict` also takes the
    `{'matrix': ..., 'scalar': ...}` form that earlier mousse saved. The parts are this
    optimizer's workings: save and load through it (a part's own `state_dict()` would meet the
    other rule's parameters in the shared state)."""

    def __init__(self, parts: dict[str, Optimizer], param_names: dict[int, str] | None = None):
        self.parts = parts
        self.param_names = param_names or {}
        for rule, opt in parts.items():
            for group in opt.param_groups:
                group["rule"] = rule
        super().__init__([g for opt in parts.values() for g in opt.param_groups], {})
        self._share()

    def _share(self) -> None:
        """Give this optimizer the parts' groups (the same dicts, so what a schedule sets reaches
        them) and one state dict, the union of theirs, that the parts use too."""
        self.param_groups = [g for opt in self.parts.values() for g in opt.param_groups]
        state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)  # Any: torch's state type
        for opt in self.parts.values():
            state.update(opt.state)
            opt.state = state
        self.state = state

    def add_param_group(self, param_group: Knobs) -> None:
        """torch's `add_param_group`; a new group goes to the optimizer its "rule" names
        ("matrix" or "scalar"), which fills in its defaults and checks it."""
        rule = param_group.get("rule")
        if rule not in self.parts:
            raise ValueError(
                f"invalid rule={rule!r}: a param group names the optimizer that steps it, one "
                f"of {sorted(self.parts)}"
            )
        part = self.parts[rule]
        new = not any(param_group is g for g in part.param_groups)  # not one adopted at init
        if new:
            part.add_param_group(param_group)
        try:
            super().add_param_group(param_group)  # a parameter in two groups is an error
        except ValueError:
            if new:
                part.param_groups.pop()
            raise
        if new:
            self._share()  # keep each rule's groups together, as state_dicts list them

    @overload
    def step(self, closure: None = None) -> None: ...
    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure_loss(closure)
        for opt in self.parts.values():
            opt.step()
        return loss

    def state_dict(self) -> StateDict:
        """torch's standard state dict; delayed refreshes still being computed are waited for
        and saved as pending (`KroneckerOptimizer.state_dict`)."""
        for opt in self.parts.values():
            if hasattr(opt, "finish_refreshes"):
                opt.finish_refreshes()
        return super().state_dict()

    def load_state_dict(self, state_dict: StateDict) -> None:
        """torch's standard load (its hooks included): each rule's optimizer loads its groups,
        keeping its own conventions (the family keeps each buffer's saved dtype). The earlier
        `{'matrix': ..., 'scalar': ...}` form is taken too."""
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            state_dict = pre_hook(self, state_dict) or state_dict
        saved = standard_state(state_dict, self.parts)
        if len(saved["param_groups"]) != len(self.param_groups):
            raise ValueError(
                f"optimizer state has {len(saved['param_groups'])} param groups, this optimizer "
                f"{len(self.param_groups)}: it was saved for another model or routing"
            )
        # a standard state from elsewhere may lack the rules: its groups are taken in order
        groups = [
            {"rule": ours["rule"], **group}
            for group, ours in zip(saved["param_groups"], self.param_groups, strict=True)
        ]
        for i, (group, ours) in enumerate(zip(groups, self.param_groups, strict=True)):
            if group["rule"] != ours["rule"]:
                raise ValueError(
                    f"optimizer state's param group {i} is for the {group['rule']} optimizer, "
                    f"this optimizer's for the {ours['rule']} one"
                )
        for rule, opt in self.parts.items():
            mine = [g for g in groups if g["rule"] == rule]
            ids = [i for g in mine for i in g["params"]]
            state = {i: saved["state"][i] for i in ids if i in saved["state"]}
            opt.load_state_dict({"state": state, "param_groups": mine})
        self._share()  # torch's load gave each part new group dicts and a new state dict
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def telemetry(self) -> list[dict[str, Tensor]]:
        return [
            row
            for opt in self.parts.values()
            if hasattr(opt, "telemetry")
            for row in opt.telemetry()
        ]

    def fisher_params(self) -> list[Tensor]:
        """Parameters whose next step needs a sampled-label gradient (see KroneckerOptimizer)."""
        return [
            p
            for opt in self.parts.values()
            if hasattr(opt, "fisher_params")
            for p in opt.fisher_params()
        ]

    def set_fisher_grads(self, grads: dict[Tensor, Tensor]) -> None:
        for opt in self.parts.values():
            if hasattr(opt, "set_fisher_grads"):
                mine = {id(p) for g in opt.param_groups for p in g["params"]}
                opt.set_fisher_grads({p: g for p, g in grads.items() if id(p) in mine})

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Every part's iterate average swapped in (where a part keeps one), raw weights after."""
        with contextlib.ExitStack() as stack:
            for opt in self.parts.values():
                if hasattr(opt, "averaged_weights"):
                    stack.enter_context(opt.averaged_weights())
            yield


def standard_state(state_dict: StateDict, rules: Collection[str]) -> StateDict:
    """A `CombinedOptimizer` state dict in torch's standard form: as it is, or converted from the
    `{'matrix': ..., 'scalar': ...}` form of earlier mousse (each part's groups tagged with
    its rule, in the order of `rules`, and its parameter ids moved past the earlier parts')."""
    if "param_groups" in state_dict:
        return state_dict
    if set(state_dict) != set(rules):
        raise ValueError(
            f"optimizer state holds parts {sorted(state_dict)}, expected {sorted(rules)} (or "
            "torch's standard 'state' and 'param_groups')"
        )
    state, groups, offset = {}, [], 0
    for rule in rules:
        part = state_dict[rule]
        count = sum(len(g["params"]) for g in part["param_groups"])
        groups += [
            {**g, "rule": rule, "params": [offset + i for i in g["params"]]}
            for g in part["param_groups"]
        ]
        state.update({offset + i: buffers for i, buffers in part["state"].items()})
        offset += count
    return {"state": state, "param_groups": groups}


def build_optimizer(
    model: nn.Module,
    optimizer: str = "mousse",
    lr: float = 0.06,
    scalar_optimizer: ScalarOptimizer = "adamw",
    scalar_lr: float = 0.006,
    weight_decay: float | None = None,
    matrix_kwargs: KnobArgs | None = None,
    roles: dict[str, str] | None = None,
    owned: set[str] | None = None,
    compiled: bool = False,
    transposed: Collection[str] | None = None,
) -> tuple[CombinedOptimizer, list[Route]]:
    """One optimizer for the whole model, and the routing table.

    optimizer: a name in `optim.OPTIMIZER_CLASSES` (mousse, muon, shampoo, soap, splus, tnt, specgd) or
    "adamw", for block matrices; `matrix_kwargs` (the family's knobs) go to it.
    weight_decay: the matrix optimizer's (None: the named optimizer's own default).
    scalar_optimizer: "adamw" | "lion" for embeddings, head, gains and biases (no weight decay;
    with Lion the head's lr is divided by sqrt(fan_in), as in the released Mousse recipe).
    owned: names of the block matrices this process's matrix optimizer gets (None: all). Under
    torch.distributed each rank owns some (mousse.distributed.ownership.plan_ownership); the others are
    updated by their owners. The routing table still lists every parameter.
    compiled: run the family optimizer's per-bucket math under torch.compile.
    transposed: names of the block matrices stored (in, out) (None: `infer_transposed`, which
    finds transformers' Conv1D and modules marked `fan_in_fan_out = True`); the family
    optimizer optimizes each as the (out, in) matrix it is.
    """
    roles = roles or infer_roles(model)
    flipped = set(infer_transposed(model) if transposed is None else transposed)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    _check_routing(named, roles, optimizer, scalar_optimizer, flipped)
    matrices = [(n, p) for n, p in named if roles[n] == "matrix"]
    others = [(n, p) for n, p in named if roles[n] != "matrix"]

    def scalar_lr_for(name: str, p: Tensor) -> float:
        if scalar_optimizer == "lion" and roles[name] == "head":
            return scalar_lr / math.sqrt(p.shape[1])
        return scalar_lr

    parts: dict[str, Optimizer] = {}
    mine = [(n, p) for n, p in matrices if owned is None or n in owned]
    if mine:
        kwargs = KnobArgs(**(matrix_kwargs or {}))
        if weight_decay is not None:
            kwargs["weight_decay"] = weight_decay
        parts["matrix"] = _matrix_optimizer(optimizer, mine, flipped, lr, compiled, kwargs)
    if others:
        groups: dict[float, list[Tensor]] = {}
        for n, p in others:
            groups.setdefault(scalar_lr_for(n, p), []).append(p)
        scalar_groups = [{"params": ps, "lr": g_lr} for g_lr, ps in groups.items()]
        cls = torch.optim.AdamW if scalar_optimizer == "adamw" else Lion
        parts["scalar"] = cls(scalar_groups, lr=scalar_lr, betas=(0.9, 0.95), weight_decay=0.0)
    combined = CombinedOptimizer(parts, {id(p): n for n, p in named})
    routes = [Route(n, tuple(p.shape), roles[n], optimizer, lr, n in flipped) for n, p in matrices]
    routes += [
        Route(n, tuple(p.shape), roles[n], scalar_optimizer, scalar_lr_for(n, p)) for n, p in others
    ]
    return combined, routes


def _check_routing(
    named: Sequence[tuple[str, Tensor]],
    roles: dict[str, str],
    optimizer: str,
    scalar_optimizer: str,
    transposed: set[str],
) -> None:
    """ValueError for a parameter without a known role, a 'matrix' of fewer than 2 dimensions, a
    weight named transposed that is no block matrix, or an unknown optimizer name."""
    missing = [n for n, _ in named if roles.get(n) not in ROLES]
    if missing:
        raise ValueError(f"no role for parameters {missing}; expected one of {ROLES}")
    bad = [n for n, p in named if roles[n] == "matrix" and p.ndim < 2]
    if bad:
        raise ValueError(f"parameters {bad} have role 'matrix' but fewer than 2 dimensions")
    stray = sorted(transposed - {n for n, _ in named if roles[n] == "matrix"})
    if stray:
        raise ValueError(
            f"transposed names {stray}, which are not block matrices of this model; name only "
            "weights whose role is 'matrix'"
        )
    if optimizer not in (*OPTIMIZER_CLASSES, "adamw"):
        raise ValueError(
            f"invalid optimizer={optimizer!r}: expected one of {', '.join((*OPTIMIZER_CLASSES, 'adamw'))}"
        )
    if scalar_optimizer not in get_args(ScalarOptimizer):
        raise ValueError(
            f"invalid scalar_optimizer={scalar_optimizer!r}: expected 'adamw' or 'lion'"
        )


def _matrix_optimizer(
    name: str,
    named: Sequence[tuple[str, Tensor]],
    transposed: set[str],
    lr: float,
    compiled: bool,
    kwargs: KnobArgs,
) -> Optimizer:
    """The block matrices' optimizer: a family member, with the weights stored (in, out) in a
    group of their own that says so, or AdamW (elementwise: orientation is moot) with the LM
    recipe's betas."""
    if name == "adamw":
        # Any: torch.optim.AdamW's keyword arguments, whose types differ from one to the next
        adamw: dict[str, Any] = {"betas": (0.9, 0.95), "weight_decay": 0.01, **kwargs}
        return torch.optim.AdamW([p for _, p in named], lr=lr, **adamw)
    stored = [p for n, p in named if n not in transposed]
    flipped = [p for n, p in named if n in transposed]
    groups: list[Knobs] = [{"params": stored}] if stored else []
    groups += [{"params": flipped, "transposed": True}] if flipped else []
    args: KnobArgs = {**kwargs, "lr": lr}  # the group's lr wins over a knob's
    return OPTIMIZER_CLASSES[name](groups, compiled=compiled, **args)
