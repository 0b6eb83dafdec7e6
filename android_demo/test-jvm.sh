#!/usr/bin/env bash
# Builds the app's plain-Kotlin core (android_demo/bundle-core) on the JVM and runs its tests, without Gradle
# or Google's Maven: JetBrains' compiler from the npm registry (kotlin-compiler), JUnit 5 and Android's own
# org.json from Debian (junit5, libandroid-json-org-java). Installs what is missing, then compiles only when a
# source changed.
#   bash android_demo/test-jvm.sh                 compile and run the tests
#   bash android_demo/test-jvm.sh --build-only    compile; print JUnit's launcher and the classpath (for tests/test_bundle_core.py)
#   bash android_demo/test-jvm.sh -- ARGS         pass ARGS to JUnit's console launcher
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
core=$here/bundle-core
build=$core/build
tools=${EDGEQAT_JVM_TOOLS:-$here/.tools}
kotlin_version=2.4.20
kotlin_sha512=IF5IVM7LpPhA/ntHQQpaVt1yxpaaQovtEVYLyqWMuaLr0XelLPPm7/sM6HLhtcRjjjoSsK7I7lP2kzYJkMy73w==
junit=/usr/share/java/junit-platform-console-standalone.jar
json=/usr/share/java/json-android.jar
kotlinc=$tools/kotlinc-$kotlin_version/bin/kotlinc

build_only=0
junit_args=()
while [ $# -gt 0 ]; do
  case $1 in
    --build-only) build_only=1 ;;
    --) shift; junit_args=("$@"); break ;;
    *) echo "usage: $0 [--build-only] [-- JUNIT_ARGS]" >&2; exit 64 ;;
  esac
  shift
done
log() { echo "test-jvm: $*" >&2; }

apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  log "installing $* (apt)"
  $sudo apt-get install -y -q "$@" >/dev/null 2>&1 || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q "$@" >/dev/null; }
}

command -v java >/dev/null || apt_install default-jre-headless
[ -f "$junit" ] || apt_install junit5
[ -f "$json" ] || apt_install libandroid-json-org-java

if [ ! -x "$kotlinc" ]; then
  log "installing kotlin-compiler $kotlin_version (npm registry)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  tgz=$tmp/kotlin-compiler-$kotlin_version.tgz
  url=https://registry.npmjs.org/kotlin-compiler/-/kotlin-compiler-$kotlin_version.tgz
  if command -v curl >/dev/null; then curl -fsSL -o "$tgz" "$url"; else python3 -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])" "$url" "$tgz"; fi
  found=$(python3 -c "import base64, hashlib, sys; print(base64.b64encode(hashlib.sha512(open(sys.argv[1], 'rb').read()).digest()).decode())" "$tgz")
  [ "$found" = "$kotlin_sha512" ] || { log "kotlin-compiler download does not match the registry's sha512"; exit 1; }
  mkdir -p "$tools"
  tar -xzf "$tgz" -C "$tmp"
  rm -rf "$tools/kotlinc-$kotlin_version"
  mv "$tmp/package" "$tools/kotlinc-$kotlin_version"
  chmod +x "$tools/kotlinc-$kotlin_version"/bin/*
fi
lib=$tools/kotlinc-$kotlin_version/lib
classes=$build/classes
test_classes=$build/test-classes
schemas=("$root/core/schemas/manifest.schema.json" "$root/runtime_check/schemas/device_results.schema.json")

# Compile when the sources, the schemas or this script changed since the last build.
stamp=$(cat "$0" "${schemas[@]}" $(find "$core/src" -name '*.kt' | sort) | sha256sum | cut -c1-64)
if [ "$(cat "$build/stamp" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$build" && mkdir -p "$classes/edgeqat/schemas" "$test_classes"
  start=$(date +%s)
  "$kotlinc" -nowarn -jvm-target 17 -cp "$json" -d "$classes" $(find "$core/src/main" -name '*.kt' | sort) 2>&1 | grep -v '^warning: unable to find kotlin-stdlib' >&2 || true
  [ -f "$classes/org/edgeqat/bundlecore/Bundle.class" ] || { log "compiling bundle-core failed"; exit 1; }
  # The schemas go in as resources: the app reads the same files the Python side validates with.
  cp "${schemas[@]}" "$classes/edgeqat/schemas/"
  "$kotlinc" -nowarn -jvm-target 17 -cp "$classes:$json:$lib/kotlin-test.jar:$lib/kotlin-test-junit5.jar:$junit" -d "$test_classes" \
    $(find "$core/src/test" -name '*.kt' | sort) 2>&1 | grep -v '^warning: unable to find kotlin-stdlib' >&2 || true
  [ -n "$(find "$test_classes" -name '*Test.class' | head -1)" ] || { log "compiling bundle-core's tests failed"; exit 1; }
  echo "$stamp" > "$build/stamp"
  log "compiled bundle-core in $(( $(date +%s) - start )) s"
fi

classpath=$classes:$test_classes:$json:$lib/kotlin-stdlib.jar:$lib/kotlin-test.jar:$lib/kotlin-test-junit5.jar
if [ $build_only = 1 ]; then
  printf '%s\n%s\n' "$junit" "$classpath"  # JUnit's launcher, then the test classpath
  exit 0
fi
if [ ${#junit_args[@]} -eq 0 ]; then junit_args=(--select-package org.edgeqat.bundlecore); fi
exec java -jar "$junit" --class-path "$classpath" --disable-banner --details=summary --fail-if-no-tests "${junit_args[@]}"
