# Sourced by the shell wrappers in scripts/: sets PY to the interpreter that runs this project's code,
# and stops with one clear line when that interpreter cannot import the package.
#
# PY is $PYTHON when set (make exports the venv's interpreter; tests pass their own sys.executable),
# else the repository's .venv/bin/python when it exists, else python3 from PATH. A bare `python` from
# PATH is never assumed: on a fresh machine it is an interpreter without the package.
_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x "$_repo/.venv/bin/python" ]; then
  PY=$_repo/.venv/bin/python
else
  PY=python3
fi
if ! (cd / && "$PY" -c "import fusiondp") > /dev/null 2>&1; then
  echo "$(basename "$0"): the interpreter $PY cannot import fusiondp. Run \`make setup\` (creates .venv with the package), or set PYTHON to an interpreter that has it (pip install -e .)." >&2
  exit 2
fi
export PYTHON=$PY
