"""What every launcher runs in: the one place where errors become exit codes, Ctrl-C, the workdir lock.

Launchers stay thin (Flax-examples style): parse flags, build frozen configs (configs.py), call one
library function, report. Library code defines no flags and prints nothing.
"""

import contextlib
import os
import sys

from absl import flags
from absl import logging

from dcjax import errors

FLAGS = flags.FLAGS


def init_runtime():
    """Multi-host jobs join JAX's distributed runtime before any other JAX call."""
    if FLAGS.distributed:
        import jax

        jax.distributed.initialize()


class _DropLibraryInfo:
    """absl-handler filter: INFO records from TFDS/Orbax internals drown the progress lines."""

    NOISY = ("orbax", "tensorflow_datasets")

    def filter(self, record):
        return record.levelno > 20 or not any(n in record.pathname for n in self.NOISY)


def quiet_libraries():
    """TFDS imports TensorFlow: keep it quiet before it loads; hide library INFO chatter."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_DropLibraryInfo())


def fail(message: str):
    """One clear line on stderr and a non-zero exit: the contract for bad input."""
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)


def flag_error(flag: str, detail: str) -> errors.ConfigError:
    """A launcher's own check of its flag ``--flag``: the ConfigError reading '--flag <detail>'."""
    return errors.ConfigError(flag, detail, flag=flag)


def flag_for(setting: str | None, renames: dict | None = None) -> str | None:
    """The flag of a config field: ``renames[setting]`` (hidden -> attack_hidden), else the flag of the same name;
    None when there is no such flag (a setting no launcher flag sets, such as TrainConfig.momentum)."""
    flag = (renames or {}).get(setting, setting)
    return flag if flag is not None and flag in FLAGS else None


@contextlib.contextmanager
def naming_flags(**renames):
    """ConfigErrors raised inside (config checks, data-fit checks) name their setting's flag (`flag_for`) in place
    of the field: the error carries the field, so nothing parses its message."""
    try:
        yield
    except errors.ConfigError as e:
        flag = flag_for(e.setting, renames)
        if flag is None:
            raise
        raise e.named(flag) from None


def parse_flags(argv):
    """app.run's flags_parser: a bad flag value or a missing --flagfile is one `error:` line, exit 2."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        message = " ".join(str(e).split()).removeprefix("ERROR:: ")
        fail(f"--flagfile: {message}" if isinstance(e, flags.CantOpenFlagFileError) else message)


def run_guarded(fn, *user_errors):
    """Calls fn(); user-facing errors become `fail`, Ctrl-C becomes `interrupted`, anything else is a real crash.

    User-facing: ``dcjax.errors.UserError`` (config, data, workdir, export, a full disk) and ``user_errors``; an
    OSError whose errno blames the disk or its permissions becomes the same one line. Everything else, a plain
    ValueError included, is a bug and keeps its traceback.
    """
    from dcjax import interrupt

    try:
        return fn()
    except (errors.UserError, *user_errors) as e:
        logging.debug("user error", exc_info=True)
        fail(str(e))
    except OSError as e:
        if not errors.is_environment(e):
            raise
        logging.debug("environment error", exc_info=True)
        fail(str(errors.write_error(e.filename or "a file", e)))
    except interrupt.Interrupted:
        _exit_now()  # Not sys.exit: interpreter shutdown waits on (and can crash in) XLA's threads.


def interrupted_line() -> str:
    """The one line a Ctrl-C ends with: what is safely on disk and how to go on."""
    from dcjax import interrupt

    saved = interrupt.saved()
    if saved is None:
        return "interrupted before anything was saved; rerun the same command to start again"
    return f"interrupted; {saved} is saved: rerun the same command to resume from it"


def _exit_now():
    """How a Ctrl-C ends, from the main thread or the SIGINT watcher (while the main thread is inside XLA): one
    line, locks released, status 130, at once."""
    from dcjax import workdir

    sys.stderr.write(interrupted_line() + "\n")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    workdir.release()
    os._exit(130)  # The main thread cannot unwind from inside a jitted call; everything on disk is whole.


def hold_workdir(path: str, overwrite: bool = False, config: dict | None = None, finished_ok: bool = False):
    """Before the data loads: ``path`` is usable (named, not a file, writable), not finished (unless
    ``overwrite`` or ``finished_ok``), recorded with the same ``config`` if given, and locked for this run (one
    writer per workdir; only process 0 of a multi-host job locks, the others write the same files)."""
    import jax
    from dcjax import workdir

    workdir.precheck(path, overwrite or finished_ok, config)
    if jax.process_index() == 0:
        workdir.hold(path)


def launcher_main(run):
    """absl main for a launcher: no stray arguments, runtime and logs set up, Ctrl-C honoured within seconds,
    errors in one line, workdir locks released."""

    def main(argv):
        from dcjax import host, interrupt, workdir

        if len(argv) > 1:
            fail(f"unexpected arguments: {' '.join(argv[1:])}")
        interrupt.install(_exit_now)
        # Pinned now: a run's results record the commit it started from, not one made while it ran.
        host.commit()
        init_runtime()
        quiet_libraries()
        try:
            run_guarded(run)
        finally:
            workdir.release()

    return main
