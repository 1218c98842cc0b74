#!/usr/bin/env bash
# Builds the Android artifacts of the mobile SDK:
#   out/android/jniLibs/<abi>/libswitchboard_mobile.so   one per ABI (cargo-ndk)
#   out/android/kotlin/uniffi/switchboard_mobile/*.kt     the generated Kotlin bindings
# Needs: an Android NDK (r26 or newer) in ANDROID_NDK_HOME, and rustup. cargo-ndk is
# installed from crates.io when missing. See sdk/mobile/README.md.
#
#   ABIS="arm64-v8a x86_64" sdk/mobile/scripts/build-android.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT="${OUT:-sdk/mobile/out/android}"
ABIS="${ABIS:-arm64-v8a armeabi-v7a x86_64}"
# minSdk of the apps this targets; 24 is Android 7.0.
PLATFORM="${PLATFORM:-24}"
: "${ANDROID_NDK_HOME:?set ANDROID_NDK_HOME to an Android NDK (r26 or newer)}"

declare -A RUST_TARGET=(
    [arm64-v8a]=aarch64-linux-android
    [armeabi-v7a]=armv7-linux-androideabi
    [x86_64]=x86_64-linux-android
    [x86]=i686-linux-android
)
targets=()
ndk_args=()
for abi in $ABIS; do
    target="${RUST_TARGET[$abi]:?unknown ABI $abi}"
    targets+=("$target")
    ndk_args+=(-t "$abi")
done
rustup target add "${targets[@]}"
command -v cargo-ndk >/dev/null || cargo install cargo-ndk --locked --version '^4'

cargo ndk "${ndk_args[@]}" --platform "$PLATFORM" -o "$OUT/jniLibs" \
    build --release -p switchboard-mobile

# The bindings come from a host build of the same crate (the metadata is the same on
# every target); the generator is the crate's own, so versions cannot drift.
cargo build --release -p switchboard-mobile
target_dir="${CARGO_TARGET_DIR:-target}"
case "$(uname)" in Darwin) lib=libswitchboard_mobile.dylib ;; *) lib=libswitchboard_mobile.so ;; esac
rm -rf "$OUT/kotlin"
cargo run --release -p switchboard-mobile-bindgen -- \
    generate --language kotlin --out-dir "$OUT/kotlin" --library "$target_dir/release/$lib"
echo "Android artifacts in $OUT"
