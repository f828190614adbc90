"""The fixture every loading and export test starts from: a tiny pipeline saved with ``save_pretrained``."""

import pytest
from remote_code import restore

from tiny_components import tiny_pipeline


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The saved folder and the tiny pipeline's restoration (:func:`remote_code.restore`) before saving."""
    folder = tmp_path_factory.mktemp("saved")
    pipe = tiny_pipeline()
    pipe.save_pretrained(folder)
    return folder, restore(pipe)
