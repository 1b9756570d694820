"""Which model a run trains: the built-in GPT, or the user's own (`--model`, docs/models.md).

`build_model` is the one place a run's model is made (trainer, cost estimate, bench, timing pass).
A user's model is a function (or class) called with `vocab_size`, `seq_len` and the
--model-config keyword arguments that returns an nn.Module mapping token ids (B, T) to logits
(B, T, V); `hf:ARCH` is such a function over Hugging Face transformers. The model is checked
where it is built, each way it can be wrong a one-line ConfigError, and wrapped in `UserModel`,
which gives it the GPT's interface: the loss with targets, and `param_roles()` for routing.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mousse.optim.routing import CONVOLUTIONS, ROLES, infer_roles, infer_transposed

from .config import ConfigError, TrainConfig, closest, parse_model_config
from .model import GPT, GPTConfig

if TYPE_CHECKING:  # an optional dependency (mousse[hf])
    from transformers import PreTrainedModel

HF_PREFIX = "hf:"
HF_INSTALL = "pip install 'mousse[hf]'"
RUN_ARGUMENTS = ("vocab_size", "seq_len")  # what every --model function is called with


class UserModel(nn.Module):
    """A user's module behind the built-in GPT's interface: `forward(idx, targets)` also returns
    the mean cross-entropy (in fp32, as GPT's), and `param_roles()` routes its parameters (their
    names get the prefix `net.`)."""

    def __init__(self, net: nn.Module, roles: dict[str, str]):
        super().__init__()
        self.net = net
        self.roles = {f"net.{name}": role for name, role in roles.items()}

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        logits: Tensor = self.net(idx)
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    def param_roles(self) -> dict[str, str]:
        return dict(self.roles)


class HFCausalLM(nn.Module):
    """A Hugging Face causal LM as a plain module, token ids (B, T) -> logits (B, T, V) without a
    cache; its embeddings (input and positions) and its output embedding (the head) go to the
    scalar optimizer, every other 2-D weight (nn.Linear or GPT-2's Conv1D) is a block matrix."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.hf = model

    def forward(self, idx: Tensor) -> Tensor:
        logits: Tensor = self.hf(input_ids=idx, use_cache=False).logits
        return logits

    def param_roles(self) -> dict[str, str]:
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        # transformers leaves get_output_embeddings unannotated
        head = self.hf.get_output_embeddings()  # type: ignore[no-untyped-call]

        def role(p: Tensor) -> str:
            if id(p) in embeddings:  # a tied head is the embedding, listed once under its name
                return "embedding"
            if head is not None and p is head.weight:
                return "head"
            return "matrix" if p.ndim == 2 else "scalar"

        return {name: role(p) for name, p in self.named_parameters()}


def build_model(
    cfg: TrainConfig, vocab_size: int, device: torch.device | str = "cpu"
) -> GPT | UserModel:
    """The run's model on `device`, initialized from torch's current RNG state. On the meta
    device (cost estimates: shapes only) it is made there, with no memory and no forward; on a
    real device a user's model is checked once by a forward on a (1, 2) batch."""
    device = torch.device(device)
    factory = load_factory(cfg.model) if cfg.model else None  # module-level code: never on meta
    with torch.device("meta") if device.type == "meta" else contextlib.nullcontext():
        if factory is None:
            # `resolve` sets the GPT's shape whenever there is no --model
            assert cfg.d_model is not None and cfg.n_layers is not None
            assert cfg.n_heads is not None and cfg.head_dim is not None
            return GPT(
                GPTConfig(
                    vocab_size=vocab_size,
                    d_model=cfg.d_model,
                    n_layers=cfg.n_layers,
                    n_heads=cfg.n_heads,
                    head_dim=cfg.head_dim,
                    seq_len=cfg.seq_len,
                )
            ).to(device)
        assert cfg.model is not None  # the factory is the one it names
        net = _call(
            cfg.model,
            factory,
            vocab_size=vocab_size,
            seq_len=cfg.seq_len,
            **parse_model_config(cfg.model_config),
        )
    model = UserModel(net, _roles(cfg.model, net, vocab_size)).to(device)
    if device.type != "meta":
        _check_logits(cfg.model, model, vocab_size, device)
    return model


def flops_per_token(cfg: TrainConfig, n_params: int) -> float:
    """Forward and backward FLOPs per token: 6 per parameter plus, for the built-in GPT, its
    attention (a --model's attention is not counted)."""
    attention = 0
    if not cfg.model:
        assert cfg.n_layers is not None and cfg.d_model is not None  # `resolve` sets them
        attention = 12 * cfg.n_layers * cfg.d_model * cfg.seq_len
    return 6 * n_params + attention


def load_factory(spec: str) -> Callable[..., object]:
    """The function a --model names: MODULE:FUNCTION (imported from the installed packages or the
    current directory), path/to/file.py:FUNCTION, or hf:ARCH."""
    if spec.startswith(HF_PREFIX):
        return _hf_factory(spec[len(HF_PREFIX) :].strip())
    where, _, name = (s.strip() for s in spec.rpartition(":"))
    module = (
        _load_file(where)
        if where.endswith(".py") or "/" in where or "\\" in where
        else _import(where)
    )
    if not hasattr(module, name):
        public = [n for n in vars(module) if not n.startswith("_")]
        raise ConfigError(
            f"--model {spec}: {where} has no '{name}'{closest(name, public)}; name "
            "the function that builds the model"
        )
    factory: object = getattr(module, name)
    if not callable(factory):
        raise ConfigError(
            f"--model {spec}: '{name}' is not callable (its type: "
            f"{type(factory).__name__}); name the function (or class) that builds "
            "the model"
        )
    return factory


@contextlib.contextmanager
def _on_path(folder: str) -> Iterator[None]:
    """`folder` first on sys.path meanwhile, so the user's module finds its neighbours."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _import(name: str) -> ModuleType:
    with _on_path(str(Path.cwd())):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
                raise ConfigError(
                    f"--model: no module '{name}' in the current directory or the "
                    "installed packages; check the name, or give the file: "
                    f"{name.replace('.', '/')}.py:FUNCTION"
                ) from None
            raise ConfigError(f"--model: importing {name} failed: {_where(exc)}") from None
        except Exception as exc:  # the user's module failed: say where, on one line
            raise ConfigError(f"--model: importing {name} failed: {_where(exc)}") from None


def _load_file(path: str) -> ModuleType:
    """A Python file as a module, loaded once per process (under a name unique to its path)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(
            f"--model: file not found: {path}; give path/to/file.py:FUNCTION "
            "(relative to the current directory) or MODULE:FUNCTION"
        )
    file = file.resolve()
    stem = os.fsencode(file.stem).decode("utf-8", "replace")  # names need not be UTF-8
    name = f"mousse_model_{stem}_{hashlib.sha1(os.fsencode(file)).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--model: {path} is not a Python file; give path/to/file.py:FUNCTION")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up there
    try:
        with _on_path(str(file.parent)):
            spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(f"--model: loading {path} failed: {_where(exc)}") from None
    return module


def model_failure(cfg: TrainConfig, exc: Exception, what: str) -> ConfigError | None:
    """The one-line error for `exc`, raised while `what` by the user's model (--model); None for
    the built-in GPT, whose errors are mousse's own."""
    if not cfg.model:
        return None
    return ConfigError(f"--model {cfg.model}: {what} failed: {_where(exc)}; fix the model")


def _where(exc: BaseException) -> str:
    """'Type: message (file:line)' on one line, the line where the user's code failed."""
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} ({exc.filename}:{exc.lineno})"
    text = " ".join(str(exc).split())
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {text}{where}"


def _call(spec: str, factory: Callable[..., object], **kwargs: object) -> nn.Module:
    """`factory(**kwargs)` after checking it takes them; a failure inside it is one line."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to read: the call itself will tell
        params = None
    if params is not None:
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        named = [
            n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        for key in kwargs:
            if key not in named and not takes_any:
                fix = (
                    f"it is called with {' and '.join(RUN_ARGUMENTS)} (keywords)"
                    if key in RUN_ARGUMENTS
                    else "fix --model-config"
                )
                raise ConfigError(
                    f"--model {spec} takes no argument '{key}'{closest(key, named)}"
                    f" (it takes {', '.join(named) or 'none'}); {fix}"
                )
        missing = [
            n for n in named if params[n].default is inspect.Parameter.empty and n not in kwargs
        ]
        if missing:
            raise ConfigError(
                f"--model {spec} needs '{missing[0]}': give it in --model-config, "
                f"e.g. --model-config {missing[0]}=..."
            )
    try:
        net = factory(**kwargs)
    except ConfigError:
        raise
    except Exception as exc:  # the user's code failed: say where, on one line
        raise ConfigError(f"--model {spec} failed to build the model: {_where(exc)}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(
            f"--model {spec} returned type {type(net).__name__}, not a "
            "torch.nn.Module; return the model (token ids (B, T) -> logits "
            "(B, T, vocab_size))"
        )
    return net


def _roles(spec: str, net: nn.Module, vocab_size: int) -> dict[str, str]:
    """Every parameter's role: the model's own `param_roles()` when it has one (checked), else
    by module (`infer_roles`): nn.Embedding weights are embeddings, the nn.Linear with
    vocab_size outputs is the head, other nn.Linear weights (and those of layers storing them
    (in, out): GPT-2's Conv1D, `fan_in_fan_out = True`) are block matrices, 1-D tensors
    scalars. A 2-D tensor that is no such layer's weight cannot be told apart (a table of positions,
    or a matrix): a ConfigError with the routing so far, asking for `param_roles()`."""
    params = dict(net.named_parameters())
    if not params:
        raise ConfigError(
            f"--model {spec}: the model has no parameters to train; give it its weights "
            "(nn.Parameter, nn.Linear, ...)"
        )
    if hasattr(net, "param_roles"):
        roles = _own_roles(spec, net)
        for name, p in params.items():
            if roles.get(name) not in ROLES:
                raise ConfigError(
                    f"--model {spec}: param_roles() gives '{name}' no role; map "
                    f"every parameter to one of {', '.join(ROLES)}"
                )
            if roles[name] == "matrix" and p.ndim < 2:
                raise ConfigError(
                    f"--model {spec}: param_roles() makes '{name}' of shape "
                    f"{tuple(p.shape)} a matrix; only weights of 2 or more dimensions can be"
                )
        return {name: roles[name] for name in params}
    roles = infer_roles(net)
    linears = {
        f"{n}.weight" if n else "weight": m
        for n, m in net.named_modules()
        if isinstance(m, nn.Linear)
    }
    for name, module in linears.items():  # no vocabulary-sized output: a block's last Linear
        if roles.get(name) == "head" and module.out_features != vocab_size:
            roles[name] = "matrix"
    convs = {f"{n}.weight" for n, m in net.named_modules() if isinstance(m, CONVOLUTIONS)}
    known = linears.keys() | convs | infer_transposed(net)  # weights whose module tells their role
    unsure = [n for n, p in params.items() if roles[n] == "matrix" and n not in known]
    if unsure:
        table = ", ".join(f"{n}={'?' if n in unsure else roles[n]}" for n in list(params)[:12])
        more = f" and {len(params) - 12} more" if len(params) > 12 else ""
        raise ConfigError(
            f"--model {spec}: cannot tell the role of '{unsure[0]}' "
            f"{tuple(params[unsure[0]].shape)}, a 2-D tensor that is no nn.Linear's "
            f"weight (routing: {table}{more}); give the model a param_roles() method "
            f"returning {{name: role}}, role one of {', '.join(ROLES)}"
        )
    return {name: roles[name] for name in params}


# Any: what the user's param_roles() returns, each role then checked against ROLES
def _own_roles(spec: str, net: nn.Module) -> dict[Any, Any]:
    """What the model's own `param_roles()` returns: a ConfigError unless it is a dict."""
    try:
        roles = cast(Any, net).param_roles()  # Any: as above
    except Exception as exc:  # the user's code failed: say where, on one line
        raise ConfigError(f"--model {spec}: its param_roles() failed: {_where(exc)}") from None
    if not isinstance(roles, dict):
        raise ConfigError(
            f"--model {spec}: param_roles() returned {type(roles).__name__}; return a dict "
            f"{{parameter name: role}}, role one of {', '.join(ROLES)}"
        )
    return roles


def _check_logits(spec: str, model: UserModel, vocab_size: int, device: torch.device) -> None:
    """One forward on a (1, 2) batch in eval mode (no dropout, no RNG drawn): logits (1, 2, V)."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((1, 2), dtype=torch.long, device=device))
    except Exception as exc:
        raise ConfigError(
            f"--model {spec}: its forward on token ids of shape (1, 2) failed: {_where(exc)}"
        ) from None
    finally:
        model.train(training)
    if not isinstance(out, Tensor) or not out.is_floating_point():
        what = f"a {out.dtype} tensor" if isinstance(out, Tensor) else f"type {type(out).__name__}"
        raise ConfigError(
            f"--model {spec}: its forward returned {what}; return the logits, a "
            "float tensor (B, T, vocab_size) (a Hugging Face model: use hf:ARCH)"
        )
    if tuple(out.shape) != (1, 2, vocab_size):
        raise ConfigError(
            f"--model {spec}: its forward maps token ids (1, 2) to shape "
            f"{tuple(out.shape)}; return logits (B, T, vocab_size) = "
            f"(1, 2, {vocab_size})"
        )


def _hf_factory(arch: str) -> Callable[..., HFCausalLM]:
    """hf:ARCH as a --model function: AutoModelForCausalLM from ARCH's default config updated by
    --model-config, the run's vocab_size and (unless given) max_position_embeddings = seq_len;
    random weights, nothing downloaded."""
    try:
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:
        raise ConfigError(
            f"--model hf:{arch} needs Hugging Face transformers: {HF_INSTALL}"
        ) from None
    if arch not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(
            f"--model hf:{arch}: not a causal LM architecture of transformers"
            f"{closest(arch, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)}; e.g. hf:llama, "
            "hf:gpt2, hf:qwen2"
        )

    def build(vocab_size: int, seq_len: int, **overrides: object) -> HFCausalLM:
        default = transformers.AutoConfig.for_model(arch)
        for key in overrides:
            if not hasattr(default, key):
                raise ConfigError(
                    f"--model-config {key}: hf:{arch} has no such setting"
                    f"{closest(key, default.to_dict())}; see transformers' "
                    f"{type(default).__name__}"
                )
        tokens = {
            k: None
            for k in ("bos_token_id", "eos_token_id", "pad_token_id")  # no warnings
            if isinstance(getattr(default, k, None), int) and getattr(default, k) >= vocab_size
        }
        config = transformers.AutoConfig.for_model(
            arch,
            **{"max_position_embeddings": seq_len, **tokens, **overrides, "vocab_size": vocab_size},
        )
        # transformers leaves from_config unannotated
        return HFCausalLM(transformers.AutoModelForCausalLM.from_config(config))  # type: ignore[no-untyped-call]

    return build
