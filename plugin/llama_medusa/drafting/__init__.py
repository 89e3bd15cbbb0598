"""What proposes tokens and which of them a step verifies: the drafter over heads (drafter.py), the tree
(tree.py) and its choice on the measured cost curve (autotree.py), and the lookup branch (lookup.py) over the
context and the model's stored answers (answers.py)."""
