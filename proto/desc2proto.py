"""Prints a .proto from the serialized FileDescriptorProto inside a protoc-generated *_pb2.py."""
import ast, sys
from google.protobuf import descriptor_pb2 as d

src = open(sys.argv[1]).read()
tree = ast.parse(src)
blob = None
for node in ast.walk(tree):
    if isinstance(node, ast.Call) and getattr(node.func, 'attr', '') == 'AddSerializedFile':
        blob = node.args[0].value
fd = d.FileDescriptorProto.FromString(blob)
T = d.FieldDescriptorProto
scalar = {T.TYPE_DOUBLE:'double',T.TYPE_FLOAT:'float',T.TYPE_INT64:'int64',T.TYPE_UINT64:'uint64',
          T.TYPE_INT32:'int32',T.TYPE_FIXED64:'fixed64',T.TYPE_FIXED32:'fixed32',T.TYPE_BOOL:'bool',
          T.TYPE_STRING:'string',T.TYPE_BYTES:'bytes',T.TYPE_UINT32:'uint32',T.TYPE_SFIXED32:'sfixed32',
          T.TYPE_SFIXED64:'sfixed64',T.TYPE_SINT32:'sint32',T.TYPE_SINT64:'sint64'}
pkg = '.' + fd.package + '.'
def tname(f):
    if f.type in scalar: return scalar[f.type]
    n = f.type_name
    return n[len(pkg):] if n.startswith(pkg) else n.lstrip('.')
out = []
w = out.append
w('syntax = "%s";' % (fd.syntax or 'proto2'))
w('')
w('package %s;' % fd.package)
w('')
for dep in fd.dependency: w('import "%s";' % dep)
if fd.dependency: w('')
for opt in fd.options.ListFields(): w('option %s = %r;' % (opt[0].name, opt[1]))
def enum(e, ind):
    w(ind + 'enum %s {' % e.name)
    for v in e.value: w(ind + '  %s = %d;' % (v.name, v.number))
    w(ind + '}')
def msg(m, ind):
    w(ind + 'message %s {' % m.name)
    entries = {n.name: n for n in m.nested_type if n.options.map_entry}
    for n in m.nested_type:
        if not n.options.map_entry: msg(n, ind + '  ')
    for e in m.enum_type: enum(e, ind + '  ')
    oneofs = {}
    for f in m.field:
        if f.HasField('oneof_index') and not f.proto3_optional:
            oneofs.setdefault(f.oneof_index, []).append(f)
    done = set()
    def field(f, ind2):
        short = tname(f).split('.')[-1]
        if f.label == T.LABEL_REPEATED and short in entries and tname(f).startswith(m.name + '.'):
            en = entries[short]
            k, v = en.field[0], en.field[1]
            w(ind2 + 'map<%s, %s> %s = %d;' % (tname(k), tname(v), f.name, f.number)); return
        lab = 'repeated ' if f.label == T.LABEL_REPEATED else ('optional ' if f.proto3_optional else '')
        t = tname(f)
        if t.startswith(m.name + '.'): t = t[len(m.name) + 1:]
        w(ind2 + '%s%s %s = %d;' % (lab, t, f.name, f.number))
    for f in m.field:
        if f.HasField('oneof_index') and not f.proto3_optional:
            i = f.oneof_index
            if i in done: continue
            done.add(i)
            w(ind + '  oneof %s {' % m.oneof_decl[i].name)
            for g in oneofs[i]: field(g, ind + '    ')
            w(ind + '  }')
        else:
            field(f, ind + '  ')
    w(ind + '}')
for e in fd.enum_type: enum(e, ''); w('')
for m in fd.message_type: msg(m, ''); w('')
print('\n'.join(out).rstrip())
