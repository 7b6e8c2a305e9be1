# b-hive environment setup, for bash and zsh. Source it from anywhere, never execute it:
#
#     source setup.sh
#
# - Uses the active conda environment when one other than "base" is active (see
#   environment.yml); otherwise creates .venv/ in the repository once and activates it.
# - Installs b-hive into that environment (pip install -e ".[test,tracking]": the test runner
#   and the MLflow extra, whose tests run with the others) the first time and again only when
#   pyproject.toml changes; pip's output goes to a log file inside the environment.
# - In a batch job (BHIVE_JOB_ENV set by bhive/job_bootstrap.sh) it activates the environment
#   the job was submitted from and neither installs nor indexes anything: many jobs starting
#   at once must not write into one shared environment.
# - Exports BHIVE_REPO, BHIVE_STORE (default <repo>/store; a value exported beforehand is kept),
#   LAW_HOME (<repo>/.law) and LAW_CONFIG_FILE (<repo>/law.cfg).
# - Refreshes law's task index when law.cfg or a task module changed, so `law run` finds every
#   task, and enables law's tab completion in interactive shells.
# Nothing here needs root. On failure it explains what went wrong and returns 1; the caller's
# shell options (set -e, set -u, ...) are left as they were.

if [ -n "${ZSH_VERSION:-}" ]; then
    # shellcheck disable=SC2296  # zsh's way of naming the file being sourced
    _bhive_this_file="${(%):-%x}"
    case "${ZSH_EVAL_CONTEXT:-}" in
        *:file*) ;;
        *)
            echo "b-hive: setup.sh must be sourced, not executed: source setup.sh" >&2
            exit 1
            ;;
    esac
elif [ -n "${BASH_VERSION:-}" ]; then
    _bhive_this_file="${BASH_SOURCE[0]}"
    if [ "${_bhive_this_file}" = "${0}" ]; then
        echo "b-hive: setup.sh must be sourced, not executed: source setup.sh" >&2
        exit 1
    fi
else
    echo "b-hive: setup.sh supports bash and zsh only; start one of them and source it there" >&2
    # shellcheck disable=SC2317  # `exit` is reached when the file is executed
    return 1 2>/dev/null || exit 1
fi

_bhive_fail() {
    echo "b-hive: $*" >&2
    return 1
}

# Prints the sha256 of pyproject.toml and the repository path: the install stamp. The path is
# part of it so that a second clone sharing a conda environment gets installed, too.
_bhive_install_fingerprint() {
    python -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest(), sys.argv[2])' \
        "${1}/pyproject.toml" "${1}"
}

# A batch job uses the Python environment of the process that submitted it, as it is.
_bhive_use_job_environment() {
    local prefix="${BHIVE_JOB_ENV}"
    [ -x "${prefix}/bin/python" ] || _bhive_fail "BHIVE_JOB_ENV=${prefix} has no bin/python;" \
        "is the environment the job was submitted from on a file system this node shares?" || return 1
    export PATH="${prefix}/bin:${PATH}"
    if [ -d "${prefix}/conda-meta" ]; then
        export CONDA_PREFIX="${prefix}"
    elif [ -f "${prefix}/pyvenv.cfg" ]; then
        export VIRTUAL_ENV="${prefix}"
    fi
    _bhive_env_description="environment ${prefix} (batch job)"
    _bhive_env_prefix="${prefix}"
}

_bhive_use_environment() {
    local repo="${1}"

    if [ -n "${BHIVE_JOB_ENV:-}" ]; then
        _bhive_use_job_environment
        return $?
    fi

    if [ -n "${CONDA_PREFIX:-}" ] && [ "${CONDA_DEFAULT_ENV:-base}" != "base" ]; then
        _bhive_env_description="conda environment ${CONDA_DEFAULT_ENV} (${CONDA_PREFIX})"
        _bhive_env_prefix="${CONDA_PREFIX}"
        return 0
    fi

    local venv="${repo}/.venv"
    if [ ! -f "${venv}/bin/activate" ]; then
        command -v python3 >/dev/null 2>&1 || _bhive_fail "python3 not found on PATH;" \
            "install Python >= 3.10 or activate a conda environment made from environment.yml" \
            || return 1
        python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || _bhive_fail \
            "$(command -v python3) is Python $(python3 -c 'import platform; print(platform.python_version())')," \
            "b-hive needs >= 3.10; put a newer python3 first on PATH or use environment.yml" \
            || return 1
        echo "b-hive: creating the virtual environment ${venv}"
        local output
        if ! output="$(python3 -m venv "${venv}" 2>&1)"; then
            echo "${output}" >&2
            # a half-made venv would be taken for a working one next time
            rm -rf "${venv}"
            _bhive_fail "could not create ${venv} with $(command -v python3) (see above);" \
                "on Debian/Ubuntu the venv module comes with the python3-venv package"
            return 1
        fi
    fi

    # shellcheck disable=SC1091
    . "${venv}/bin/activate" || _bhive_fail "could not activate ${venv}; remove it and source setup.sh again" \
        || return 1
    _bhive_env_description="virtual environment ${VIRTUAL_ENV}"
    _bhive_env_prefix="${VIRTUAL_ENV}"
}

_bhive_install_project() {
    local repo="${1}" prefix="${2}"
    local stamp="${prefix}/.bhive-install-stamp"
    local log="${prefix}/.bhive-install.log"
    local fingerprint
    fingerprint="$(_bhive_install_fingerprint "${repo}")" \
        || _bhive_fail "could not read ${repo}/pyproject.toml with $(command -v python)" || return 1

    if [ -f "${stamp}" ] && [ "$(cat "${stamp}")" = "${fingerprint}" ]; then
        return 0
    fi

    echo "b-hive: installing b-hive and its dependencies into ${prefix} (log: ${log})"
    if ! (cd "${repo}" && python -m pip install -e ".[test,tracking]") >"${log}" 2>&1; then
        echo "b-hive: installation failed; the last lines of ${log}:" >&2
        tail -n 25 "${log}" >&2
        _bhive_fail "fix the problem shown above (pyproject.toml pins every dependency), then source setup.sh again"
        return 1
    fi
    echo "${fingerprint}" >"${stamp}"
}

_bhive_index_tasks() {
    local repo="${1}"
    local index_file="${LAW_INDEX_FILE:-${LAW_HOME}/index}"

    # `law index` imports every task module and, through them, the heavy libraries; skip it
    # while the index is newer than law.cfg and every file under tasks/
    if [ -f "${index_file}" ] && [ -z "$(find "${LAW_CONFIG_FILE}" "${repo}/tasks" -newer "${index_file}" -print 2>/dev/null | head -n 1)" ]; then
        return 0
    fi

    command -v law >/dev/null 2>&1 || _bhive_fail "the law command is missing from ${_bhive_env_prefix}/bin;" \
        "remove ${_bhive_env_prefix}/.bhive-install-stamp and source setup.sh again to reinstall" || return 1

    local output
    if ! output="$(cd "${repo}" && PYTHONUNBUFFERED=1 law index --verbose 2>&1)"; then
        echo "${output}" >&2
        # a partial index would hide the failing module's tasks from `law run` without a word
        rm -f "${index_file}"
        _bhive_fail "\`law index\` could not import the task modules listed under [modules] in" \
            "${LAW_CONFIG_FILE} (traceback above); fix the module, then source setup.sh again"
        return 1
    fi
}

_bhive_enable_completion() {
    # completion only helps at a prompt
    case "$-" in
        *i*) ;;
        *) return 0 ;;
    esac
    [ "${LAW_CLI_SKIP_COMPLETION:-}" = "1" ] && return 0

    local completion_file
    completion_file="$(law completion 2>/dev/null)" || return 0
    [ -f "${completion_file}" ] || return 0

    if [ -n "${ZSH_VERSION:-}" ]; then
        # law's script would run a bare `compinit`, which stops to ask about insecure
        # directories; set zsh's completion system up without questions and register law here
        if ! (( ${+functions[compdef]} )); then
            autoload -Uz compinit && compinit -i || return 0
        fi
        autoload -Uz bashcompinit && bashcompinit || return 0
        local LAW_CLI_SKIP_COMPLETION=1
        # shellcheck disable=SC1090
        source "${completion_file}" || return 0
        complete -o bashdefault -o default -F _law_complete law 2>/dev/null
    else
        # shellcheck disable=SC1090
        source "${completion_file}" 2>/dev/null
    fi
    return 0
}

_bhive_setup_main() {
    local repo
    if [ -n "${ZSH_VERSION:-}" ]; then
        repo="${1:A:h}"
    else
        repo="$(CDPATH='' cd -- "$(dirname -- "${1}")" && pwd -P)" \
            || _bhive_fail "cannot find the directory of ${1}" || return 1
    fi

    _bhive_use_environment "${repo}" || return 1
    if [ -z "${BHIVE_JOB_ENV:-}" ]; then
        _bhive_install_project "${repo}" "${_bhive_env_prefix}" || return 1
    fi

    export BHIVE_REPO="${repo}"
    export BHIVE_STORE="${BHIVE_STORE:-${repo}/store}"
    export LAW_HOME="${repo}/.law"
    export LAW_CONFIG_FILE="${repo}/law.cfg"

    if [ -z "${BHIVE_JOB_ENV:-}" ]; then
        _bhive_index_tasks "${repo}" || return 1
        _bhive_enable_completion
    fi

    echo "b-hive: using the ${_bhive_env_description}"
    echo "b-hive: store ${BHIVE_STORE}"
}

_bhive_setup() {
    if [ -n "${ZSH_VERSION:-}" ]; then
        # plain zsh semantics whatever the caller set, restored when this function returns
        emulate -L zsh
        _bhive_setup_main "${1}"
        return $?
    fi
    local caller_options="$-" rc
    set +e +u
    _bhive_setup_main "${1}"
    rc=$?
    case "${caller_options}" in *e*) set -e ;; esac
    case "${caller_options}" in *u*) set -u ;; esac
    return "${rc}"
}

_bhive_setup "${_bhive_this_file}"
eval "unset -f _bhive_setup _bhive_setup_main _bhive_fail _bhive_install_fingerprint _bhive_use_job_environment _bhive_use_environment _bhive_install_project _bhive_index_tasks _bhive_enable_completion; unset _bhive_this_file _bhive_env_description _bhive_env_prefix; return $?"
