#!/usr/bin/env bash
# Download the raw PhysioNet/CinC Challenge 2019 sepsis data (training_setA and training_setB, one
# pipe-separated .psv file per patient, about 40,000 files) for impute_sepsis.py --raw_dir.
#
#   bash scripts/download_physionet_sepsis.sh [DEST]        # default DEST: data/physionet2019
#   python impute_sepsis.py --raw_dir data/physionet2019 --imputer tabpfn --out_dir outputs/sepsis_raw
#
# NEEDS INTERNET. It has never been run on the development machine, which has none: the raw path of
# impute_sepsis.py is tested only with synthetic .psv files in PhysioNet's format. Open access data
# (PhysioNet, attribution required): cite Reyna et al. 2019, doi 10.13026/v64v-d857.
# Source: https://physionet.org/content/challenge-2019/1.0.0/ (files under /files/ of that version).
# Files already present are skipped, so an interrupted download resumes.
set -euo pipefail
dest=${1:-data/physionet2019}
base=https://physionet.org/files/challenge-2019/1.0.0/training
mkdir -p "$dest"
if command -v wget > /dev/null; then
  # Recursive fetch of the two folders' directory listings; -N skips files already downloaded and unchanged.
  for set in training_setA training_setB; do
    wget -r -N -c -np -nH --cut-dirs=4 -R "index.html*" -e robots=off -P "$dest" "$base/$set/"
  done
elif command -v curl > /dev/null; then
  for set in training_setA training_setB; do
    mkdir -p "$dest/$set"
    # The folder's HTML listing names every p*.psv file.
    curl -fsSL "$base/$set/" | grep -o 'p[0-9]*\.psv' | sort -u | while read -r f; do
      [ -s "$dest/$set/$f" ] || curl -fsSL -o "$dest/$set/$f" "$base/$set/$f"
    done
  done
else
  echo "need wget or curl to download from $base" >&2
  exit 1
fi
n=$(find "$dest" -name '*.psv' | wc -l)
echo "$n .psv files in $dest (PhysioNet lists 20,336 in setA and 20,000 in setB)"
[ "$n" -gt 0 ] || { echo "no .psv files downloaded: check the URL $base" >&2; exit 1; }
