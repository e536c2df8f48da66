"""vlp_jax entry point: train, evaluate or describe a vision-language model from a config.

  python main.py --config=configs/clip_tiny.py --workdir=/tmp/clip_tiny
  python main.py --config=configs/clip_b16.py --mode=describe --devices=256
  python main.py --config=configs/coca_base.py:variant=tiny --workdir=/tmp/coca --mode=caption
  python main.py --config=configs/clip_tiny.py:variant=... --config.train.steps=10
  python main.py --mode=export --workdir=/tmp/coca --out=/tmp/coca_export

--mode=eval|caption|export read the run's own config (WORKDIR/config.json) when --config is
not given; --config.field=value overrides still apply.

Every mode ends by printing one JSON object on its last line.
"""
import json
import math
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file, optionally path:arg.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and the tokenizer go here.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "describe", "caption", "export"],
                  "What to do.")
flags.DEFINE_integer("step", None, "--mode=eval|caption|export: the checkpoint step "
                     "(default: latest).")
flags.DEFINE_string("out", None, "--mode=export: a new folder for the export.")
flags.DEFINE_string("caption_data", None, "--mode=caption: a data spec or a folder of images "
                    "(default: data.eval).")
flags.DEFINE_integer("devices", None, "--mode=describe: size the mesh for this many devices.")
flags.DEFINE_bool("allow_config_change", False, "Resume or evaluate a checkpoint although "
                  "the config fields that shape the model or the data differ from its own.")
flags.DEFINE_bool("debug", False, "Show the full traceback of input errors.")
FLAGS = flags.FLAGS
READING_MODES = ("eval", "caption", "export")  # may take the run's own config


def run(config, mode, workdir, step=None, devices=None, caption_data=None,
        allow_config_change=False, out=None):
  if mode == "describe":
    from vlp_jax.train import describe  # pylint: disable=g-import-not-at-top
    return describe.describe(config, devices)
  if not workdir:
    raise ValueError(f"--workdir is required for --mode={mode}")
  from vlp_jax.train import loop  # pylint: disable=g-import-not-at-top
  if mode == "eval":
    return loop.evaluate_checkpoint(config, workdir, step, allow_config_change)
  if mode == "export":
    if not out:
      raise ValueError("--out is required for --mode=export")
    from vlp_jax.train import export  # pylint: disable=g-import-not-at-top
    return export.export(config, workdir, out, step, allow_config_change)
  if mode == "caption":
    from vlp_jax.evaluate import captioner  # pylint: disable=g-import-not-at-top
    return captioner.caption_checkpoint(config, workdir, step, caption_data,
                                        allow_config_change)
  return loop.train(config, workdir, allow_config_change)


class _QuietLibraries:
  """Drops INFO lines from orbax and TFDS (dozens per checkpoint); warnings still show."""
  NOISY = ("/orbax/", "/tensorflow_datasets/")

  def filter(self, record):
    return record.levelno >= 30 or not any(n in record.pathname for n in self.NOISY)


def load_config():
  """FLAGS.config, or exit 2 with one line when the file is missing, broken or raises.

  config_flags defers a load error to the config's first use; this is that first use.
  """
  try:
    config = FLAGS.config
    config.keys()
    return config
  except Exception as e:  # pylint: disable=broad-except  # any error of the user's file
    if FLAGS.debug:
      raise
    _config_file_error(e, FLAGS["config"].config_filename)


def _root_cause(error):
  while (error.__cause__ or error.__context__) is not None:
    error = error.__cause__ or error.__context__
  return error


def _raised_in(error, config_path):
  """Whether `error` came from the config file's own code."""
  file = config_path.split(":")[0]
  frames = traceback.extract_tb(_root_cause(error).__traceback__)
  return bool(file) and any(f.filename.endswith(file.lstrip("./")) for f in frames)


def _config_file_error(error, path):
  """Exits 2 with one line: the config file, the original error's type, line and message."""
  root = _root_cause(error)
  if isinstance(root, SyntaxError):
    where = f" (line {root.lineno})"
  else:
    file = path.split(":")[0].lstrip("./")
    frames = [f for f in traceback.extract_tb(root.__traceback__) if f.filename.endswith(file)]
    where = f" (line {frames[-1].lineno})" if frames else ""
  lines = str(root).strip().splitlines()
  message = lines[0].strip() if isinstance(root, ValueError) and lines else (
      lines[-1].strip() if lines else "")
  print(f"error: --config={path}: {type(root).__name__}{where}: {message}", file=sys.stderr)
  sys.exit(2)


def strict_json(value):
  """`value` with NaN and infinities as null: the last line is always valid JSON."""
  if isinstance(value, dict):
    return {k: strict_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [strict_json(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = load_config()
  logging.info("config:\n%s", config)
  if FLAGS.mode != "describe":
    from vlp_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    mesh_lib.initialize_distributed()  # before anything touches the devices
  try:
    result = run(config, FLAGS.mode, FLAGS.workdir, FLAGS.step, FLAGS.devices,
                 FLAGS.caption_data, FLAGS.allow_config_change, FLAGS.out)
  except ValueError as e:
    if FLAGS.debug:
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if FLAGS.mode == "describe":
    print(config)
  print(json.dumps(strict_json(result), sort_keys=True, allow_nan=False), flush=True)


def _flag_value(argv, name):
  """The last value of --name=V or --name V in argv, or None."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def with_run_config(argv):
  """argv with `--config=<vlp_jax/run_config.py>:WORKDIR` first when a reading mode names a
  workdir but no --config (before any --config.field override, as config_flags needs)."""
  if any(a.startswith("--config=") or a in ("--config", "-h", "--help", "--helpfull")
         for a in argv):
    return argv
  workdir = _flag_value(argv, "workdir")
  if _flag_value(argv, "mode") not in READING_MODES or not workdir:
    print("error: --config is required (--mode=eval|caption|export may instead read the run's "
          "own config from --workdir)", file=sys.stderr)
    sys.exit(2)
  from vlp_jax import run_config  # pylint: disable=g-import-not-at-top
  try:
    run_config.read(workdir)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  return argv[:1] + [f"--config={run_config.__file__}:{workdir}"] + argv[1:]


def parse_flags(argv):
  """absl's parser, but a mistyped `--config.a.b=v`, a bad flag or a config file that is
  missing, broken or raises ends with one line (status 2)."""
  argv = with_run_config(argv)
  config_args = [a for a in argv if a.startswith("--config=")]
  config_path = config_args[-1][len("--config="):] if config_args else ""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    if not overrides or _raised_in(e, config_path):
      _config_file_error(e, config_path)
    name, _, hint = str(e.args[0] if e.args else e).strip("\"'").partition("\n")
    print(f"error: unknown config field {name.strip(chr(39))!r} in {' '.join(overrides)}"
          f"{'; ' + hint if hint else ''}", file=sys.stderr)
    sys.exit(2)
  except Exception as e:  # pylint: disable=broad-except  # the config file's own errors too
    if config_path and ("--config" in str(e).split(":")[0] or not isinstance(e, flags.Error)):
      if "--debug" in argv:
        raise
      _config_file_error(e, config_path)
    if not isinstance(e, flags.Error):
      raise
    print(f"error: {str(e).splitlines()[0]} (--helpfull lists the flags)", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
