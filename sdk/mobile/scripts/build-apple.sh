#!/usr/bin/env bash
# Builds the Apple artifacts of the mobile SDK (on macOS with Xcode only):
#   out/apple/SwitchboardMobileFFI.xcframework   static libraries for iOS devices, the iOS
#                                                simulator (arm64 + x86_64) and macOS,
#                                                with the C header and module map
#   out/apple/Sources/SwitchboardMobile/switchboard_mobile.swift   the Swift bindings
# See sdk/mobile/README.md for adding them to an Xcode project or a Swift package.
set -euo pipefail
cd "$(dirname "$0")/../../.."
[ "$(uname)" = Darwin ] || { echo "build-apple.sh needs macOS with Xcode" >&2; exit 1; }
OUT="${OUT:-sdk/mobile/out/apple}"
target_dir="${CARGO_TARGET_DIR:-target}"
# iOS 15 and macOS 12 are the oldest this is meant for.
export IPHONEOS_DEPLOYMENT_TARGET="${IPHONEOS_DEPLOYMENT_TARGET:-15.0}"
export MACOSX_DEPLOYMENT_TARGET="${MACOSX_DEPLOYMENT_TARGET:-12.0}"

targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin)
rustup target add "${targets[@]}"
for t in "${targets[@]}"; do
    cargo build --release -p switchboard-mobile --target "$t"
done

rm -rf "$OUT"
mkdir -p "$OUT/headers" "$OUT/Sources/SwitchboardMobile" "$OUT/sim" "$OUT/macos"
cargo run --release -p switchboard-mobile-bindgen -- \
    generate --language swift --out-dir "$OUT/generated" \
    --library "$target_dir/aarch64-apple-darwin/release/libswitchboard_mobile.dylib"
mv "$OUT/generated/switchboard_mobile.swift" "$OUT/Sources/SwitchboardMobile/"
mv "$OUT/generated/"*.h "$OUT/headers/"
# An XCFramework's headers folder needs its module map under this name.
mv "$OUT/generated/"*.modulemap "$OUT/headers/module.modulemap"

lib=libswitchboard_mobile.a
lipo -create "$target_dir/aarch64-apple-ios-sim/release/$lib" \
    "$target_dir/x86_64-apple-ios/release/$lib" -output "$OUT/sim/$lib"
lipo -create "$target_dir/aarch64-apple-darwin/release/$lib" \
    "$target_dir/x86_64-apple-darwin/release/$lib" -output "$OUT/macos/$lib"
xcodebuild -create-xcframework \
    -library "$target_dir/aarch64-apple-ios/release/$lib" -headers "$OUT/headers" \
    -library "$OUT/sim/$lib" -headers "$OUT/headers" \
    -library "$OUT/macos/$lib" -headers "$OUT/headers" \
    -output "$OUT/SwitchboardMobileFFI.xcframework"
echo "Apple artifacts in $OUT"
