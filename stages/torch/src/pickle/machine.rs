//! The pickle virtual machine: the opcodes `torch.save` emits (protocol 2, plus the protocol 4
//! ones a custom `pickle_protocol` adds) over a node arena, with a work budget against crafted
//! files. Classes are only recorded, never imported.

use std::collections::HashMap;

use super::{node_name, Id, Machine, Node, PResult, MAX_WRAP};

impl<'a> Machine<'a> {
    pub(super) fn new(data: &'a [u8], pos: usize, nodes: &'a mut Vec<Node>) -> Self {
        Machine {
            data,
            pos,
            nodes,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            storages: Vec::new(),
            work: 0,
        }
    }

    /// The work allowed for this pickle: linear in its size.
    pub(super) fn budget(&self) -> u64 {
        16 * self.data.len() as u64 + (1 << 20)
    }

    pub(super) fn charge(&mut self, items: usize) -> PResult<()> {
        self.work += items as u64;
        if self.work > self.budget() {
            return Err(format!(
                "the pickle makes its opcodes walk more than {} items (a crafted or corrupt \
                 file: shared containers re-used through the memo)",
                self.budget()
            ));
        }
        Ok(())
    }

    pub(super) fn push_node(&mut self, n: Node) {
        self.nodes.push(n);
        self.stack.push(self.nodes.len() - 1);
    }

    pub(super) fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| format!("truncated pickle at byte {}", self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(super) fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u16(&mut self) -> PResult<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(super) fn u32(&mut self) -> PResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(super) fn u64(&mut self) -> PResult<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    pub(super) fn line(&mut self) -> PResult<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("unterminated text line in pickle")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    pub(super) fn pop(&mut self) -> PResult<Id> {
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".to_string())
    }

    pub(super) fn pop_mark(&mut self) -> PResult<Vec<Id>> {
        let m = self.marks.pop().ok_or("pickle MARK missing")?;
        if m > self.stack.len() {
            return Err("pickle MARK beyond the stack".into());
        }
        Ok(self.stack.split_off(m))
    }

    pub(super) fn top(&self) -> PResult<Id> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| "pickle stack empty".into())
    }

    pub(super) fn str_of(&self, id: Id) -> Option<&str> {
        match &self.nodes[id] {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn int_of(&self, id: Id) -> Option<i64> {
        match &self.nodes[id] {
            Node::Int(i) => Some(*i),
            Node::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// Items of a tuple or list (or a `torch.Size(tuple)` object, looked through iteratively and
    /// at most [`MAX_WRAP`] levels deep, so a long chain of wrapped objects cannot overflow the
    /// stack).
    pub(super) fn seq_of(&self, id: Id) -> Option<&[Id]> {
        let mut id = id;
        for _ in 0..MAX_WRAP {
            match &self.nodes[id] {
                Node::Tuple(v) | Node::List(v) => return Some(v),
                Node::Object { args, .. } => match &self.nodes[*args] {
                    Node::Tuple(a) if a.len() == 1 => id = a[0],
                    _ => return None,
                },
                _ => return None,
            }
        }
        None
    }

    pub(super) fn ints_of(&mut self, id: Id) -> PResult<Vec<i64>> {
        let items = self.seq_of(id).ok_or("tensor size/stride is not a tuple")?;
        let n = items.len();
        let v = items
            .iter()
            .map(|&i| {
                self.int_of(i)
                    .ok_or_else(|| "tensor size/stride holds a non-integer".to_string())
            })
            .collect::<PResult<Vec<_>>>()?;
        self.charge(n)?;
        Ok(v)
    }

    pub(super) fn add_item(&mut self, target: Id, k: Id, v: Id) -> PResult<()> {
        match &mut self.nodes[target] {
            Node::Dict(items) | Node::Object { items, .. } => {
                items.push((k, v));
                Ok(())
            }
            other => Err(format!("SETITEM on a {}", node_name(other))),
        }
    }

    pub(super) fn append(&mut self, target: Id, v: Id) -> PResult<()> {
        match &mut self.nodes[target] {
            Node::List(items) => {
                items.push(v);
                Ok(())
            }
            // list subclasses rebuilt as objects: keep items under integer keys
            Node::Object { items, .. } => {
                let k = items.len() as i64;
                self.nodes.push(Node::Int(k));
                let kid = self.nodes.len() - 1;
                if let Node::Object { items, .. } = &mut self.nodes[target] {
                    items.push((kid, v));
                }
                Ok(())
            }
            other => Err(format!("APPEND on a {}", node_name(other))),
        }
    }

    /// Interprets until STOP; returns the pickled object.
    pub(super) fn run(&mut self) -> PResult<Id> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.u64()?; // FRAME: the length is only a hint
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.push_node(Node::None),
                0x88 => self.push_node(Node::Bool(true)),
                0x89 => self.push_node(Node::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.push_node(Node::Int(v));
                }
                b'K' => {
                    let v = self.u8()? as i64;
                    self.push_node(Node::Int(v));
                }
                b'M' => {
                    let v = self.u16()? as i64;
                    self.push_node(Node::Int(v));
                }
                0x8a | 0x8b => {
                    // LONG1 / LONG4: little-endian two's complement of n bytes
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let b = self.take(n)?;
                    let v = if n == 0 {
                        0
                    } else if n <= 16 {
                        let mut buf = if b[n - 1] & 0x80 != 0 {
                            [0xffu8; 16]
                        } else {
                            [0u8; 16]
                        };
                        buf[..n].copy_from_slice(b);
                        let v = i128::from_le_bytes(buf);
                        // Only the legacy magic number (80 bits) is this large; clamp it.
                        v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
                    } else {
                        return Err(format!("integer of {n} bytes in pickle"));
                    };
                    self.push_node(Node::Int(v));
                }
                b'I' => {
                    let l = self.line()?;
                    let node = match l.as_str() {
                        "00" => Node::Bool(false),
                        "01" => Node::Bool(true),
                        s => Node::Int(s.trim().parse().map_err(|_| format!("bad INT `{s}`"))?),
                    };
                    self.push_node(node);
                }
                b'L' => {
                    let l = self.line()?;
                    let v = l
                        .trim_end_matches('L')
                        .parse()
                        .map_err(|_| format!("bad LONG `{l}`"))?;
                    self.push_node(Node::Int(v));
                }
                b'G' => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                    self.push_node(Node::Float(v));
                }
                b'F' => {
                    let l = self.line()?;
                    let v = l.trim().parse().map_err(|_| format!("bad FLOAT `{l}`"))?;
                    self.push_node(Node::Float(v));
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as usize,
                        0x8c => self.u8()? as usize,
                        _ => self.u64()? as usize,
                    };
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.push_node(Node::Str(s));
                }
                b'U' | b'T' => {
                    // Python 2 byte strings (legacy checkpoints pickled under Python 2)
                    let n = if op == b'U' {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.push_node(Node::Str(s));
                }
                b'C' | b'B' | 0x8e => {
                    let n = match op {
                        b'C' => self.u8()? as usize,
                        b'B' => self.u32()? as usize,
                        _ => self.u64()? as usize,
                    };
                    let b = self.take(n)?.to_vec();
                    self.push_node(Node::Bytes(b));
                }
                b'V' => {
                    let l = self.line()?;
                    self.push_node(Node::Str(l));
                }
                b'}' => self.push_node(Node::Dict(Vec::new())),
                b']' => self.push_node(Node::List(Vec::new())),
                b')' => self.push_node(Node::Tuple(Vec::new())),
                0x8f => self.push_node(Node::List(Vec::new())), // EMPTY_SET, kept as a list
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = items
                        .chunks(2)
                        .filter(|c| c.len() == 2)
                        .map(|c| (c[0], c[1]))
                        .collect();
                    self.push_node(Node::Dict(pairs));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_node(Node::List(items));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_node(Node::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("pickle stack underflow in TUPLEn".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_node(Node::Tuple(items));
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo.insert(k, self.top()?);
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo.insert(k, self.top()?);
                }
                b'p' => {
                    let k = self.line()?.trim().parse().map_err(|_| "bad PUT")?;
                    self.memo.insert(k, self.top()?);
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo.insert(k, self.top()?); // MEMOIZE
                }
                b'h' | b'j' | b'g' => {
                    let k = match op {
                        b'h' => self.u8()? as u32,
                        b'j' => self.u32()?,
                        _ => self.line()?.trim().parse().map_err(|_| "bad GET")?,
                    };
                    let id = *self
                        .memo
                        .get(&k)
                        .ok_or_else(|| format!("pickle memo {k} unset"))?;
                    self.stack.push(id);
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(t);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push_node(Node::Global { module, name });
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(m), Some(n)) = (self.str_of(module), self.str_of(name)) else {
                        return Err("STACK_GLOBAL of non-strings".into());
                    };
                    let node = Node::Global {
                        module: m.to_string(),
                        name: n.to_string(),
                    };
                    self.push_node(node);
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.add_item(d, k, v)?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top()?;
                    for c in items.chunks(2) {
                        if let [k, v] = c {
                            self.add_item(d, *k, *v)?;
                        }
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.append(l, v)?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    for v in items {
                        self.append(l, v)?;
                    }
                }
                0x90 => {
                    // ADDITEMS (sets)
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    for v in items {
                        self.append(l, v)?;
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let node = self.reduce(func, args)?;
                    self.push_node(node);
                }
                0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let node = self.reduce(class, args)?;
                    self.push_node(node);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let node = self.reduce(class, args)?;
                    self.push_node(node);
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    if let Node::Object { state: s, .. } = &mut self.nodes[target] {
                        *s = Some(state);
                    }
                    // BUILD on a dict (an OrderedDict's `_metadata`) or a tensor: nothing to keep.
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let node = self.persistent(pid)?;
                    self.push_node(node);
                }
                b'P' => return Err("text persistent ids (PERSID) are not supported".into()),
                other => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{other:02x} at byte {at}"
                    ))
                }
            }
        }
    }
}
