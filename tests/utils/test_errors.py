"""``utils.errors``: a missing folder's error says how to make it."""
import pytest

from utils.errors import UserError, require_folder


def test_require_folder_says_how_to_make_it(tmp_path):
    require_folder(str(tmp_path), "masks", "`make`", "--dir")
    with pytest.raises(UserError) as e:
        require_folder(str(tmp_path / "no"), "pseudo masks", "`python infer_aff.py`", "--dir")
    assert str(e.value) == (f"pseudo masks not found: {tmp_path / 'no'}. Write them with "
                            f"`python infer_aff.py`, or pass --dir.")
