"""esmjax.exits: which error ends in which exit code, always as one line on stderr."""

import pytest

from esmjax import exits


def _exit(fn, capsys) -> tuple[int, str]:
  with pytest.raises(SystemExit) as e:
    fn()
  return e.value.code, capsys.readouterr().err


def test_fail_prints_one_line_naming_the_error(capsys):
  code, err = _exit(lambda: exits.fail(ValueError("bad value\nfor key x"), 2), capsys)
  assert code == 2 and err == "esmjax: error: bad value for key x\n"
  code, err = _exit(lambda: exits.fail(KeyError(), 3), capsys)  # no message: the error's type
  assert code == 3 and err == "esmjax: error: KeyError\n"


def _raise(error):
  def run():
    with exits.exit_codes((KeyError, *exits.PATH_ERRORS), run_errors=(OSError,)):
      raise error

  return run


@pytest.mark.parametrize(
  "error,code",
  [
    (KeyError("no such key"), exits.USER_ERROR),
    (FileExistsError(17, "File exists", "/out"), exits.USER_ERROR),  # a path error before OSError
    (PermissionError(13, "Permission denied", "/out"), exits.USER_ERROR),
    (OSError(28, "No space left on device", "/out/shard"), exits.CANNOT_GO_ON),
  ],
)
def test_exit_codes_map_user_and_run_errors(error, code, capsys):
  got, err = _exit(_raise(error), capsys)
  assert got == code and err.startswith("esmjax: error: ") and err.count("\n") == 1
  assert str(error) in err


def test_any_other_error_keeps_its_traceback(capsys):
  with pytest.raises(ZeroDivisionError):
    _raise(ZeroDivisionError("a bug"))()
  assert capsys.readouterr().err == ""
