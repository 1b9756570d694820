"""Model code named in a file is imported only with the user's say-so, as Hugging Face's
`trust_remote_code`: a run dir, an ablation dir, a spec or a config file someone sent can name a
Python file (`--model path.py:FUNCTION`), and importing it runs that file. A model named with
`--model` on the command line, or any model with `--trust-model-code`, is imported."""

from __future__ import annotations

import typer

from mousse.train.config import ConfigError
from mousse.train.usermodel import HF_PREFIX

from .options import RUN_PANEL

TRUST_MODEL_CODE = typer.Option(
    False,
    "--trust-model-code",
    help="Import the model code (--model FILE.py:FUNCTION or MODULE:FUNCTION) that a run dir, ablation dir, spec or config file names. Without it only a --model given on the command line is imported.",
    rich_help_panel=RUN_PANEL,
)


def is_code(model: str | None) -> bool:
    """Whether a model setting imports Python code (hf:ARCH builds from transformers' configs,
    no code of the file's author)."""
    return bool(model) and not str(model).startswith(HF_PREFIX)


def named_models(source: object) -> set[str]:
    """Every model setting in `source`, however deep: the values of each `model` key of a run's
    settings, a spec's [base], [sweep] and [tune] tables, or a saved plan (its runs and tuning
    grids included), whether one value or a list of them. One walk, so that no table a file can
    name code in is left out."""
    if isinstance(source, dict):
        found: set[str] = set()
        for key, value in source.items():
            if key == "model":
                values = value if isinstance(value, (list, tuple)) else [value]
                found |= {str(v) for v in values if v is not None}
            found |= named_models(value)
        return found
    if isinstance(source, (list, tuple)):
        return set().union(*map(named_models, source))
    return set()


def check_trusted(source: object, named: str | None, trust: bool, where: str) -> None:
    """ConfigError unless every model code that `source` (the settings, spec or plan `where`
    came from) names is the --model of the command line (`named`), or the user trusts it
    (`trust`)."""
    untrusted = sorted(m for m in named_models(source) if is_code(m) and m != named)
    if untrusted and not trust:
        raise ConfigError(
            f"{where} names model code {untrusted[0]}; it is imported (and runs) only if you "
            f"say so: pass --trust-model-code, or --model {untrusted[0]}"
        )
