"""The commands of ``svmtool``: one module per command (its options and its flow).

``svmtool.cli`` builds the app from them; ``common`` holds what every command
shares (one-line errors, exit codes, JSON, the consoles) and ``options`` the
options several commands take. Job modules (numpy, the pipeline) are imported
inside the command functions, so ``svmtool --help`` starts quickly.
"""
