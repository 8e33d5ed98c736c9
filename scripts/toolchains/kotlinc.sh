#!/usr/bin/env bash
# Runs the Kotlin/JVM compiler installed by kotlin.sh.
#
# Usage: scripts/toolchains/kotlinc.sh -d OUT [-cp CP] [other kotlinc options] FILES...
#
# Adds -no-stdlib -no-reflect -jvm-target 17 and puts the Kotlin stdlib,
# kotlinx.coroutines and JNA on the compile classpath (before any -cp given).
# If KOTLIN_COMPILER_JAR, KOTLIN_STDLIB_JAR, KOTLIN_COROUTINES_JAR and JNA_JAR
# are all set in the environment they are used as is; otherwise kotlin.sh is
# run (fast once cached) to find or install them.
# Run the result with:
#   java -cp OUT:$KOTLIN_STDLIB_JAR:$KOTLIN_COROUTINES_JAR:$JNA_JAR MainKt
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_lib.sh"

if [ -z "${KOTLIN_COMPILER_JAR:-}" ] || [ -z "${KOTLIN_STDLIB_JAR:-}" ] \
   || [ -z "${KOTLIN_COROUTINES_JAR:-}" ] || [ -z "${JNA_JAR:-}" ]; then
    eval "$("$TOOLCHAINS_DIR/kotlin.sh")"
fi

[ $# -gt 0 ] || die "usage: kotlinc.sh -d OUT [-cp CP] FILES..."

cp_base=$KOTLIN_STDLIB_JAR:$KOTLIN_COROUTINES_JAR:$JNA_JAR
user_cp=
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        -cp|-classpath)
            [ $# -ge 2 ] || die "$1 needs an argument"
            user_cp=${user_cp:+$user_cp:}$2
            shift 2 ;;
        *)
            args+=("$1")
            shift ;;
    esac
done

exec java -Xss8m -cp "$KOTLIN_COMPILER_JAR" org.jetbrains.kotlin.cli.jvm.K2JVMCompiler \
    -no-stdlib -no-reflect -jvm-target 17 \
    -cp "$cp_base${user_cp:+:$user_cp}" \
    "${args[@]}"
