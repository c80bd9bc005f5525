# Sourced by the other scripts: runs the idempotent set-up, then exports what the build needs
# (libtorch from the cached torch venv; see scripts/setup.sh).
_seqserve_env=$(bash "$(dirname "${BASH_SOURCE[0]}")/setup.sh" --print-env) || return 1 2>/dev/null || exit 1
eval "$_seqserve_env"
unset _seqserve_env
