# Sourced by the scripts: create .venv and install the pinned dependencies when they changed.
# The pins live in constraints.txt (regenerate: .venv/bin/pip freeze --exclude-editable).
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "dcr-stream needs Python 3.11+ ($python is older); set PYTHON" >&2; exit 2; }
venv=${DCR_VENV:-.venv}
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$venv/.installed" 2>/dev/null)" != "$want" ]; then
  echo "Installing dependencies into $venv ..." >&2
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --upgrade "pip>=24"
  "$venv/bin/pip" install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
  echo "$want" > "$venv/.installed"
fi
export PATH="$PWD/$venv/bin:$PATH"
