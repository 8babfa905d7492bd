"""The operator's commands: the command line and what each subcommand does (migrate, status,
verify, replay, clear, roles, demo). They call the library; none is imported by it.
"""
