package storetest

// For the tests and benchmarks of this package.
var Settings = settings

const DirEnv = dirEnv
