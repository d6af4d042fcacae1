"""Command-line entry point: `python -m jaxdeca.main --config=configs/X.py --workdir=DIR`.

The config file (an ml_collections config) is the single source of hyper-parameters;
`config.mode` chooses the job:

  showcase   render the FLAME model (by default the embedded demo head) in a set of poses,
             identities and expressions, with landmarks, and the renderer's outputs
             (albedo x SH light, shape, detailed shape, depth, UV position map) to PNG grids.
  train      run the training loop (jaxdeca.train.loop) on the task named by `config.task`:
             'pretrain', 'coarse', 'detail' (DECA's stages) or 'toy'.
  demo       the embedded default end to end (jaxdeca.train.demo): synthetic demo-head data,
             pretrain -> coarse -> detail, held-out pictures and OBJs, renderer showcase.

Any field can be overridden on the command line, e.g. `--config.flame.path=/data/flame.npz` (in
the demo's config `--config.flame_path`: a misspelling's error names the config's own spelling);
an override naming no field of the config, or giving a value of another type than the field's
(--config.seed=abc), is one 'error:' line (exit status 2), as is a `--config=FILE[:ARG]` whose
FILE is not there or whose get_config(ARG) fails (an unknown stage).
"""
from __future__ import annotations

import importlib
import os
import re
import sys
import textwrap

from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags
from ml_collections.config_flags import config_path
from ml_collections.config_flags.config_flags import UnsupportedOperationError

from jaxdeca import xla_options
from jaxdeca.flame.io import FlameFileError
from jaxdeca.train import paths

FLAGS = flags.FLAGS


class ConfigFileError(Exception):
    """A --config=FILE[:ARG] that gives no config; the message names the flag and why. Not a
    ValueError: absl would turn it into its 'FATAL Flags parsing error' report."""


class _ConfigFileParser:
    """The --config flag's parser (ml_collections' parser of --config=FILE[:ARG], which it wraps),
    except that a FILE that is not there and an exception from FILE's get_config(ARG) (e.g. an
    ARG it does not know) are a ConfigFileError. Before, the first was a traceback at the config's
    first use, the second absl's FATAL line with a traceback inside (ValueError, TypeError) or a
    bare traceback (any other error)."""

    def __init__(self, parser):
        self._parser = parser

    def __getattr__(self, name):  # flag_type, syntactic_help, ...: ml_collections' parser's
        return getattr(self._parser, name)

    def parse(self, path):
        file = path.split(":", 1)[0]
        if not os.path.isfile(file):
            raise ConfigFileError(f"--config={path}: no such config file {file}")
        _importable_configs(file)
        try:
            return self._parser.parse(path)
        except Exception as e:  # noqa: BLE001 -- whatever get_config raised, named in one line
            raise ConfigFileError(f"--config={path}: {_get_config_error(e)}") from e


def _importable_configs(file: str) -> None:
    """The shipped configs build on each other (`from configs import coarse`); for a FILE in a
    `configs` package, its parent folder goes at the end of sys.path, so that they load from any
    working directory, not only the repository root (a `configs` found earlier still wins)."""
    folder = os.path.dirname(os.path.abspath(file))
    parent = os.path.dirname(folder)
    if os.path.basename(folder) == "configs" and os.path.isfile(os.path.join(folder, "__init__.py")) \
            and parent not in sys.path:
        sys.path.append(parent)


def _get_config_error(e: Exception) -> str:
    """The message of what FILE's get_config raised: ml_collections re-raises a ValueError or
    TypeError as a new one holding the traceback as text; the original is its __context__."""
    if "Error whilst parsing config file" in str(e) and e.__context__ is not None:
        e = e.__context__
    return str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"


config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.", lock_config=True)
FLAGS["config"].parser = _ConfigFileParser(FLAGS["config"].parser)
flags.DEFINE_string("workdir", None, "Directory for outputs, checkpoints and logs.")
flags.mark_flags_as_required(["config", "workdir"])

# mode -> "module:function"; each function takes (config, workdir) and returns None.
MODES = {
    "showcase": "jaxdeca.apps.showcase:run",
    "train": "jaxdeca.train.run:run",
    "demo": "jaxdeca.train.demo:run",
}


def run_mode(config, workdir: str) -> None:
    """Runs the job named by `config.mode` with outputs under `workdir`."""
    if config.mode not in MODES:
        raise paths.ConfigError(f"config.mode={config.mode!r} is not one of {sorted(MODES)}")
    module_name, fn_name = MODES[config.mode].split(":")
    if not workdir:
        raise paths.ConfigError("--workdir is empty; it must name the folder for the job's outputs")
    from jaxdeca.data import images
    resolved = paths.resolve(workdir)
    if not images.is_utf8(resolved):  # TensorFlow's event writer (TensorBoard) takes text paths only
        raise paths.ConfigError(f"--workdir={images.shown_name(resolved)}: its path is not valid UTF-8 (e.g. a "
                                "Latin-1 name), which TensorBoard's writer cannot take: use a folder with a UTF-8 path")
    try:
        paths.makedirs(workdir)
    except OSError as e:  # a file of that name, no permission, a read-only disk
        raise paths.ConfigError(f"--workdir={workdir}: cannot be made a folder ({e.strerror or e})") from None
    getattr(importlib.import_module(module_name), fn_name)(config, workdir)


_LOADED_USER_ERRORS = (("jaxdeca.data", "DatasetError"), ("jaxdeca.train.checkpoint", "CheckpointError"),
                       ("jaxdeca.train.loop", "TrainingDiverged"))


def _user_errors():
    """What the job reports as one line (exit status 2) instead of a traceback: a config field,
    a FLAME file, a checkpoint or a built dataset it cannot use, and a run that diverged.

    Imports nothing: the classes of _LOADED_USER_ERRORS are taken from the modules already
    imported, as an error of one was raised by its module. (Importing them took 6 s, TensorFlow
    with clu, before a config error found by `run_mode` could be printed, and a Ctrl-C that cut
    such an import short made it fail with an unrelated error.)"""
    loaded = (getattr(sys.modules.get(module), name, None) for module, name in _LOADED_USER_ERRORS)
    return (paths.ConfigError, FlameFileError, *(c for c in loaded if c is not None))


def parse_flags(argv):
    """absl's flag parsing, except that a `--config.<field>` override naming no field of the
    config (a typo), giving a value of another type than the field's (--config.seed=abc) or
    naming a field ml_collections cannot override (a bare None default in the user's own config
    file), and a --config=FILE[:ARG] that gives no config (ConfigFileError), are one 'error:' line
    (exit status 2) instead of ml_collections' traceback or absl's 'FATAL Flags parsing error'
    line (exit status 1); absl reports any other flag error as before."""
    try:
        return FLAGS(argv)
    except ConfigFileError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (UnsupportedOperationError, flags.IllegalFlagValueError) as e:
        explain = _untyped_field_override if isinstance(e, UnsupportedOperationError) else _wrong_type_override
        message = explain(e, argv)
        if message is None:
            _absl_flags_error(e)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except flags.Error as e:
        _absl_flags_error(e)
    except (AttributeError, KeyError) as e:
        message = _unknown_field_override(e, argv)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _unknown_field_override(error, argv) -> str | None:
    """The one-line message for ml_collections' AttributeError or KeyError `error` when a
    `--config.<field>` override names no field of the config: '--config.optim.lr: the config
    has no field 'lr'' and a hint (ml_collections' 'did you mean', else the field the config
    spells otherwise, `_spelled_otherwise`). None when argv has no such override."""
    overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    if not overrides:
        return None
    chain = [error]
    while isinstance(chain[-1].__context__, (AttributeError, KeyError)):
        chain.append(chain[-1].__context__)
    field = str(chain[-1].args[0] if chain[-1].args else chain[-1]).strip("'")
    hints = [str(x.args[0]) for x in chain if x.args and "Did you mean" in str(x.args[0])]
    hint = ("; d" + hints[0][hints[0].index("Did you mean") + 1:].rstrip("'")) if hints else ""
    named = [o for o in overrides if field in o[len("--config."):].split(".")] or overrides
    base = _config_as_given(argv)
    if len(named) > 1:  # flags ending in the same name: the one the config lacks
        named = [o for o in named if not _resolves(base, o[len("--config."):])] or named
    if not hint:
        other = _spelled_otherwise(base, named[0][len("--config."):])
        hint = f"; this config spells it --config.{other}" if other else ""
    return f"{named[0]}: the config has no field {field!r}{hint}"


def _config_as_given(argv):
    """The config --config=FILE[:ARG] in `argv` gives, without overrides (None if none loads): the
    flag holds no value yet when an override failed."""
    spec = None
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
    try:
        return FLAGS["config"].parser.parse(spec) if spec else None
    except Exception:  # noqa: BLE001 -- only a better flag to name is at stake
        return None


def _spelled_otherwise(config, path: str) -> str | None:
    """The field of `config` that `path` names in other words, or None: the demo's
    config.flame_path and config.data_dir are config.flame.path and config.data.data_dir in the
    stage configs (configs/coarse.py), and the other way round. Words are split at '.' and '_';
    a field whose words are `path`'s, else the one field whose words end with `path`'s or whose
    words `path`'s end with (two words at least)."""
    def fields(node, prefix=""):
        for key, value in node.items():  # a user's config may have keys that are not strings
            yield f"{prefix}{key}"
            if isinstance(value, ConfigDict):
                yield from fields(value, f"{prefix}{key}.")
    if config is None:
        return None
    words = re.split(r"[._]", path)
    candidates = [(f, re.split(r"[._]", f)) for f in fields(config) if f != path]
    same = [f for f, w in candidates if w == words]
    if same:
        return same[0]
    ends = [f for f, w in candidates
            if min(len(w), len(words)) >= 2 and (w[-len(words):] == words or words[-len(w):] == w)]
    return ends[0] if len(ends) == 1 else None


def _resolves(config, path: str) -> bool:
    """Whether config.<path> names a field of `config` (False when config is None)."""
    try:
        config_path.get_value(path, config)
        return True
    except (AttributeError, KeyError, IndexError, ValueError, TypeError):
        return False


_TYPE_NAMES = {bool: "a bool (true or false)", int: "an int", float: "a float", str: "a string", tuple: "a tuple"}


def _wrong_type_override(error, argv) -> str | None:
    """The one-line message for absl's IllegalFlagValueError `error` when it is a `--config.<field>`
    override whose value does not parse as the field's type (absl: 'flag --config.seed=abc:
    invalid literal for int() with base 10: 'abc''): '--config.seed=abc: config.seed takes an
    int (invalid literal ...)'. The type is the one ml_collections parsed the value as. None for
    any other flag error."""
    text = str(error)
    if not text.startswith("flag --config."):
        return None
    name = text[len("flag --"):].split("=", 1)[0]
    value = None  # what the command line gave: --config.seed=abc or --config.seed abc
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    head = f"flag --{name}={value}: "
    if value is None or not text.startswith(head):
        return None
    try:
        field_type = config_path.get_type(name.split(".", 1)[1], FLAGS["config"].value)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    expected = "a ConfigDict (a dict)" if isinstance(field_type, type) and issubclass(field_type, ConfigDict) \
        else _TYPE_NAMES.get(field_type, f"a {getattr(field_type, '__name__', field_type)}")
    return f"--{name}={value}: {name} takes {expected} ({text[len(head):]})"


def _untyped_field_override(error, argv) -> str | None:
    """The one-line message for ml_collections' UnsupportedOperationError `error`, an override of a
    field whose type it cannot parse ('Type <class 'NoneType'> of field config.sub.y is not
    supported for overriding ...'): a field defaulting to None (the shipped configs have none:
    their optional fields are typed placeholders) or a list, dict, other object. None when the
    message names no field."""
    found = re.match(r"Type <class '([\w.]+)'> of field (config(?:\.\w+)+) is not supported", str(error))
    if found is None:
        return None
    type_name, name = found.groups()
    flag = next((a for a in argv if a == f"--{name}" or a.startswith(f"--{name}=")), f"--{name}")
    what = "defaults to None" if type_name == "NoneType" else f"is a {type_name.rsplit('.', 1)[-1]}"
    return (f"{flag}: {name} {what}, which cannot be overridden from the command line; give it a typed "
            f"default in the config file: ml_collections.config_dict.placeholder(<type>)")


def _absl_flags_error(error) -> None:
    """absl's own report of a flag error (app.parse_flags_with_usage): 'FATAL Flags parsing
    error: ...' and the help hint on stderr, exit status 1."""
    message = str(error)
    if "\n" in message:
        sys.stderr.write("FATAL Flags parsing error:\n" + textwrap.indent(message, "  ") + "\n")
    else:
        sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
    sys.stderr.write("Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)


def main(argv):
    del argv
    xla_options.use_compilation_cache()  # before any program compiles
    # Progress and eval lines go to stdout; library INFO logs (orbax, tfds) only with -v 0.
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        run_mode(FLAGS.config, FLAGS.workdir)
    except Exception as e:  # noqa: BLE001 -- not BaseException: a Ctrl-C stays a KeyboardInterrupt
        if not isinstance(e, _user_errors()):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
