"""tfds helpers for the locally built datasets: quiet builds, array_record, config reuse."""
from __future__ import annotations

import contextlib
import inspect

import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils
from tensorflow_datasets.core.utils import tqdm_utils

FILE_FORMAT = "array_record"  # random access for tfds.data_source and grain


class QuietBuilderMixin:
  """Local-builder fixes: log instead of printing banners; a plain code path."""

  # tfds finds a builder's files through its top-level package, which needs the
  # uninstalled `importlib_resources` if that is a namespace package (no
  # __init__.py, as `lm` was at first); the module's file path always works.
  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(inspect.getfile(cls))

  def _log_download_bytes(self):
    logging.info("Building %s in %s", self.info.full_name, self.data_dir)

  def _log_download_done(self):
    logging.info("Built %s in %s", self.info.full_name, self.data_dir)


@contextlib.contextmanager
def _no_progress_bars():
  # tfds has only a global switch; restore whatever the caller had.
  was_active = getattr(tqdm_utils, "_active", True)
  tfds.disable_progress_bar()
  try:
    yield
  finally:
    tfds.display_progress_bar(was_active)


def is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
  # builder.is_prepared() logs a warning when the folder is absent; look first.
  return builder.data_path.exists() and builder.is_prepared()


def _make_builder(builder_cls, config, data_dir: str) -> tfds.core.DatasetBuilder:
  # tfds refuses a distinct config object named like one of the class's own.
  config = next((c for c in builder_cls.BUILDER_CONFIGS if c.name == config.name), config)
  return builder_cls(config=config, data_dir=data_dir, file_format=FILE_FORMAT)


def prepared_builder(builder_cls, config, data_dir: str) -> tfds.core.DatasetBuilder:
  """A builder for `config` whose data is on disk, generating it if needed.

  Several processes may build the same dataset at once: tfds writes into a
  temporary folder and renames it, so the losers of that race fail at the
  rename. They then find the winner's data and use it. A builder reads the
  dataset's info (its splits) when it is made: one made before another process
  finished the build holds no splits, so it is made again.
  """
  builder = _make_builder(builder_cls, config, data_dir)
  if is_prepared(builder):
    return builder if builder.info.splits else _make_builder(builder_cls, config, data_dir)
  try:
    with _no_progress_bars():
      builder.download_and_prepare(file_format=FILE_FORMAT)
  except Exception:  # pylint: disable=broad-except
    builder = _make_builder(builder_cls, config, data_dir)
    if not is_prepared(builder):
      raise
    logging.info("%s was built by another process", builder.info.full_name)
  return builder
