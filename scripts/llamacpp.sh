# Sourced by the scripts that compare exo with llama.cpp. `llamacpp_bin VARIANT TARGET` builds
# TARGET (llama-bench, llama-perplexity, ...) once and prints its path.
#
# llama.cpp comes from the llama-cpp-python 0.3.36 source distribution on PyPI (it vendors
# llama.cpp), cached under ~/.cache/exo-p2p/llama.cpp. VARIANT `native` is built with
# -DGGML_NATIVE=ON (every instruction set this CPU has, AVX-512 included); `avx2` without
# AVX-512 (AVX2, AVX-VNNI, FMA, F16C), to compare with exo's EXO_NO_AVX512=1 kernels.
LLAMACPP_VER=0.3.36
LLAMACPP_CACHE=$HOME/.cache/exo-p2p/llama.cpp

llamacpp_bin() {
  local variant=$1 target=$2 threads=${THREADS:-2}
  local src=$LLAMACPP_CACHE/$LLAMACPP_VER/src build=$LLAMACPP_CACHE/$LLAMACPP_VER/build
  [ "$variant" = native ] || build=$build-$variant
  if [ ! -f "$src/CMakeLists.txt" ]; then
    echo "fetching llama.cpp (llama-cpp-python $LLAMACPP_VER sdist, once)..." >&2
    local tmp
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --no-binary llama-cpp-python -d "$tmp" \
      "llama-cpp-python==$LLAMACPP_VER" >&2
    tar -xzf "$tmp/llama_cpp_python-$LLAMACPP_VER.tar.gz" -C "$tmp"
    mkdir -p "$LLAMACPP_CACHE/$LLAMACPP_VER"
    rm -rf "$src"
    mv "$tmp/llama_cpp_python-$LLAMACPP_VER/vendor/llama.cpp" "$src"
    rm -rf "$tmp"
  fi
  if [ ! -x "$build/bin/$target" ]; then
    echo "building llama.cpp's $target ($variant, once)..." >&2
    local flags=(-DGGML_NATIVE=ON)
    if [ "$variant" = avx2 ]; then
      flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_AVX_VNNI=ON -DGGML_FMA=ON
        -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF)
    fi
    local no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON \
      -DLLAMA_BUILD_SERVER=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
      -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" "${flags[@]}" >&2
    nice -n 5 cmake --build "$build" --target "$target" -j "$threads" >&2
  fi
  echo "$build/bin/$target"
}

# `llamacpp_tool VARIANT NAME` compiles scripts/NAME.cpp once (again when the source is newer)
# against that build's libllama and libggml, caches it beside the build as exo-NAME, and prints
# its path. Building llama-simple builds the libraries it links against.
llamacpp_tool() {
  local variant=$1 name=$2 here simple bindir src tool
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  simple=$(llamacpp_bin "$variant" llama-simple)
  bindir=$(dirname "$simple")
  src=$LLAMACPP_CACHE/$LLAMACPP_VER/src
  tool=$bindir/exo-$name
  if [ ! -x "$tool" ] || [ "$here/$name.cpp" -nt "$tool" ]; then
    echo "compiling $name against $bindir..." >&2
    g++ -std=c++17 -O2 -o "$tool.tmp.$$" "$here/$name.cpp" \
      -I"$src/include" -I"$src/ggml/include" -L"$bindir" -lllama -lggml -lggml-base \
      -Wl,-rpath,"$bindir" >&2
    mv "$tool.tmp.$$" "$tool"
  fi
  echo "$tool"
}
