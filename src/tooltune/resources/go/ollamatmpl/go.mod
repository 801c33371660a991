module tooltune.test/ollamatmpl

go 1.19
