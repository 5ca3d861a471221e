"""Rendering, one module per result type: the terminal form and the JSON form side by side.

Every renderer prints to the console it is given (the commands pass
``svmtool.commands.common.out``) and shows outside text literally (terminal.py).
"""
