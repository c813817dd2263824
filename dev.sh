#!/usr/bin/env sh
# Set up and run llmops-console from a fresh clone, with nothing but python3 (>= 3.11).
#   ./dev.sh demo [ARGS]   install into .venv and start the console on the embedded demo fleet
#   ./dev.sh test [ARGS]   install into .venv with the test extras, run ruff, mypy and the tests
set -eu
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "dev.sh: $PYTHON is missing or older than 3.11 (set PYTHON=/path/to/python3.11)" >&2
    exit 2
fi

setup() {
    if [ ! -x .venv/bin/python ]; then
        "$PYTHON" -m venv .venv || {
            echo "dev.sh: '$PYTHON -m venv' failed (on Debian/Ubuntu: apt install python3-venv)" >&2
            exit 2
        }
    fi
    # The install is editable: only a changed pyproject.toml needs pip (and the network) again.
    stamp=".venv/.installed-$(echo "$1" | tr -c 'a-z\n' '_')"
    wanted=$(cksum < pyproject.toml)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
        return
    fi
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$1"
    echo "$wanted" > "$stamp"
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
    demo)
        setup .
        exec .venv/bin/llmops demo "$@"
        ;;
    test)
        setup ".[test]"
        .venv/bin/ruff check .
        .venv/bin/ruff format --check .
        .venv/bin/mypy  # console/, backends/, screens/ (pyproject.toml [tool.mypy])
        # -n logical: one worker per CPU (xdist's "auto" counts physical cores only).
        exec .venv/bin/pytest -n logical "$@"
        ;;
    *)
        echo "usage: ./dev.sh demo [ARGS] | ./dev.sh test [PYTEST ARGS]" >&2
        exit 2
        ;;
esac
