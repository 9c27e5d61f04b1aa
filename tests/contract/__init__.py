"""The dialect contract suite: one test class every runtime passes."""
