"""`kxr`: the command line for producers, operators and auditors."""
