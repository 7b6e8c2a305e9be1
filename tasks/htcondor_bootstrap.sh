#!/usr/bin/env bash
# Run by law at the start of every HTCondor job: the job sees the repository and the store
# through a shared file system and uses the same environment as the submitting shell.
# law substitutes the placeholders below when it writes the job files.
export BHIVE_STORE="{{bhive_store}}"
source "{{bhive_repo}}/setup.sh" || exit 1
