"""vlp_jax entry point: train, evaluate or describe a vision-language model from a config.

  python main.py --config=configs/clip_tiny.py --workdir=/tmp/clip_tiny
  python main.py --config=configs/clip_b16.py --mode=describe --devices=256
  python main.py --config=configs/coca_base.py:variant=tiny --workdir=/tmp/coca --mode=caption
  python main.py --config=configs/clip_tiny.py:variant=... --config.train.steps=10

Every mode ends by printing one JSON object on its last line.
"""
import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file, optionally path:arg.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and the tokenizer go here.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "describe", "caption"], "What to do.")
flags.DEFINE_integer("step", None, "--mode=eval|caption: the checkpoint step (default: latest).")
flags.DEFINE_string("caption_data", None, "--mode=caption: a data spec or a folder of images "
                    "(default: data.eval).")
flags.DEFINE_integer("devices", None, "--mode=describe: size the mesh for this many devices.")
flags.DEFINE_bool("allow_config_change", False, "Resume or evaluate a checkpoint although "
                  "the config fields that shape the model or the data differ from its own.")
flags.DEFINE_bool("debug", False, "Show the full traceback of input errors.")
flags.mark_flag_as_required("config")
FLAGS = flags.FLAGS


def run(config, mode, workdir, step=None, devices=None, caption_data=None,
        allow_config_change=False):
  if mode == "describe":
    from vlp_jax.train import describe  # pylint: disable=g-import-not-at-top
    return describe.describe(config, devices)
  if not workdir:
    raise ValueError(f"--workdir is required for --mode={mode}")
  from vlp_jax.train import loop  # pylint: disable=g-import-not-at-top
  if mode == "eval":
    return loop.evaluate_checkpoint(config, workdir, step, allow_config_change)
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  logging.info("config:\n%s", FLAGS.config)
  if FLAGS.mode != "describe":
    from vlp_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    mesh_lib.initialize_distributed()  # before anything touches the devices
  try:
    result = run(FLAGS.config, FLAGS.mode, FLAGS.workdir, FLAGS.step, FLAGS.devices,
                 FLAGS.caption_data, FLAGS.allow_config_change)
  except ValueError as e:
    if FLAGS.debug:
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if FLAGS.mode == "describe":
    print(FLAGS.config)
  print(json.dumps(result, sort_keys=True), flush=True)


def parse_flags(argv):
  """absl's parser, but a mistyped `--config.a.b=v` ends with one line naming the field."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    name, _, hint = str(e.args[0] if e.args else e).strip("\"'").partition("\n")
    print(f"error: unknown config field {name.strip(chr(39))!r} in {' '.join(overrides)}"
          f"{'; ' + hint if hint else ''}", file=sys.stderr)
    sys.exit(2)
  except flags.Error as e:
    print(f"error: {e}\nPass --helpfull for the list of flags.", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
