"""The bottom layer every other package shares: settings, the values that cross process
boundaries (wire types), the single definitions of modes, task states, limits and id patterns,
storage codecs and metric definitions.

It imports neither torch nor Ray (import-linter checks it), so the HTTP edge and the store
actors can use everything here without loading the model stack. "Core" because every layer
above depends on it and it depends on nothing of ours.
"""
