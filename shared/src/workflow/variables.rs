//! The variables a definition's templates read, checked when it is saved rather than when a
//! message fails to render: each must be one the instance's data will hold where the template
//! renders, or be written as optional.
//!
//! The data a template renders with (see `flow.rs` and `machine.rs`) is the subject's row (of
//! the context relation, else of the trigger's table), with `herald` (the event: the fields of
//! `model::EventInfo`), `payload` (what the trigger's start carries, for the triggers that
//! carry one) and `steps` (the output of each step that has run and succeeded, by id). The
//! environment is strict: a missing variable fails the render, and so does testing it for
//! truth (`{% if x %}`, `x or "y"`). What renders without it is `x | default(…)`,
//! `x is defined` and what such a test guards.

use std::collections::BTreeSet;

use minijinja::machinery::ast::{BinOpKind, Call, CallArg, Expr, Stmt, UnaryOpKind};
use serde_json::Value as Json;

use super::shape::shape;
use super::Problem;
use crate::model::EventInfo;
use crate::render;

/// A problem for each variable a template of `document` reads that its data will not hold
/// where it renders, at the template's path (`steps[0].subject`). `columns` are the columns of
/// the relation the templates read: the automation's context relation, else the trigger's
/// table. Templates that do not compile are left to the definition's parser, which reports them.
pub fn variable_problems(document: &Json, columns: &[String]) -> Vec<Problem> {
    check(document, Some(columns))
}

/// As [`variable_problems`], for templates whose relation is not known when the definition is
/// saved (a `manual` or label trigger names no table; without a context relation, the row is
/// the one started or labelled): any name may be a column, and the rest is checked.
pub fn variable_problems_without_columns(document: &Json) -> Vec<Problem> {
    check(document, None)
}

fn check(document: &Json, columns: Option<&[String]>) -> Vec<Problem> {
    let data = Data::of(document, columns);
    let mut problems = Vec::new();
    if let Some(steps) = document.get("steps") {
        check_steps(&data, steps, "steps", &[], &mut problems);
    }
    problems
}

/// What the data of every template of one definition holds, besides the steps' outputs.
struct Data<'a> {
    /// `None` when any name may be one.
    columns: Option<&'a [String]>,
    herald: Vec<String>,
    payload: Payload,
    globals: Vec<String>,
    /// Every step id of the document, to tell a step that runs later from a name no step has.
    ids: BTreeSet<String>,
}

/// What `payload` holds, by the trigger that starts the instance.
enum Payload {
    /// A manual start's object: any keys (`herald_start`'s caller chooses them).
    Open,
    /// A time trigger's, with these keys (`herald_fire_dates`, `herald_fire_schedule` in
    /// db/schema/time.sql).
    Keys {
        trigger: &'static str,
        keys: &'static [&'static str],
    },
    /// Row and label events start no payload: `payload` is not set.
    Absent(String),
}

impl<'a> Data<'a> {
    fn of(document: &Json, columns: Option<&'a [String]>) -> Self {
        // By name: a JSON object's key order depends on serde_json's features.
        let mut herald: Vec<String> = match serde_json::to_value(EventInfo::default()) {
            Ok(Json::Object(fields)) => fields.keys().cloned().collect(),
            _ => Vec::new(),
        };
        herald.sort();
        let mut ids = BTreeSet::new();
        if let Some(steps) = document.get("steps") {
            collect_ids(steps, &mut ids);
        }
        Self {
            columns,
            herald,
            payload: payload_of(document),
            globals: render::global_names(),
            ids,
        }
    }

    /// A top-level name the data or the environment has.
    fn has(&self, name: &str) -> bool {
        let Some(columns) = self.columns else { return true };
        columns.iter().chain(&self.globals).any(|c| c == name)
    }

    fn has_payload(&self) -> bool {
        !matches!(self.payload, Payload::Absent(_))
    }
}

fn payload_of(document: &Json) -> Payload {
    match document.pointer("/trigger/type").and_then(Json::as_str) {
        Some("date") => Payload::Keys {
            trigger: "date",
            keys: &["date", "due"],
        },
        Some("schedule") => Payload::Keys {
            trigger: "schedule",
            keys: &["occurrence"],
        },
        Some(kind) if shape().trigger(kind).is_some() && kind != "manual" => Payload::Absent(kind.to_owned()),
        // A manual start, or a trigger the parser refuses.
        _ => Payload::Open,
    }
}

fn collect_ids(steps: &Json, ids: &mut BTreeSet<String>) {
    for step in steps.as_array().into_iter().flatten() {
        if let Some(id) = step.get("id").and_then(Json::as_str) {
            ids.insert(id.to_owned());
        }
        for arm in ["then", "else"] {
            if let Some(inner) = step.get(arm) {
                collect_ids(inner, ids);
            }
        }
    }
}

/// Whether a step's output is under `steps.<id>` when a later step renders.
#[derive(Debug, Clone)]
enum Output {
    /// It ran and succeeded before, on every path to here.
    Ran,
    /// It may have: the reason it may not.
    Maybe(String),
    /// It never has one: why.
    Never(String),
}

/// The steps before the one whose templates are checked, each with its output's standing.
type Earlier = [(String, Output)];

/// Checks the templates of a list of steps at `path`, after the steps of `earlier`.
fn check_steps(data: &Data, list: &Json, path: &str, earlier: &Earlier, problems: &mut Vec<Problem>) {
    let Some(items) = list.as_array() else { return };
    let mut seen = earlier.to_vec();
    for (i, step) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let kind = step.get("type").and_then(Json::as_str).unwrap_or_default();
        let id = step.get("id").and_then(Json::as_str).unwrap_or_default();
        for (key, source) in templates_of(step, kind) {
            check_template(data, &seen, &format!("{at}.{key}"), source, problems);
        }
        if !id.is_empty() {
            seen.push((id.to_owned(), own_output(step, kind, id)));
        }
        if kind == "branch" {
            // Its arms run after it; after the branch, a step of either arm may have run.
            for arm in ["then", "else"] {
                if let Some(inner) = step.get(arm) {
                    check_steps(data, inner, &format!("{at}.{arm}"), &seen, problems);
                }
            }
            seen.extend(arm_outputs(step, id));
        }
    }
}

/// What a step leaves under `steps.<id>` once it has run: waits and branches have no effect,
/// so no output (see `steps::prepare`); a step that goes on after an error has none then.
fn own_output(step: &Json, kind: &str, id: &str) -> Output {
    match kind {
        "wait" | "branch" => Output::Never(format!("step \"{id}\" is a {kind}, which has no output")),
        _ if step.get("on_error").and_then(Json::as_str) == Some("continue") => Output::Maybe(format!(
            "step \"{id}\" goes on after an error (on_error \"continue\"), without an output"
        )),
        _ => Output::Ran,
    }
}

/// The outputs of the steps inside a branch's arms, seen after it: only one arm runs.
fn arm_outputs(branch: &Json, branch_id: &str) -> Vec<(String, Output)> {
    let mut out = Vec::new();
    for arm in ["then", "else"] {
        for step in branch.get(arm).and_then(Json::as_array).into_iter().flatten() {
            let kind = step.get("type").and_then(Json::as_str).unwrap_or_default();
            let id = step.get("id").and_then(Json::as_str).unwrap_or_default();
            let output = match own_output(step, kind, id) {
                Output::Never(why) => Output::Never(why),
                _ => Output::Maybe(format!("step \"{id}\" runs only on one arm of branch \"{branch_id}\"")),
            };
            if !id.is_empty() {
                out.push((id.to_owned(), output));
            }
            if kind == "branch" {
                out.extend(arm_outputs(step, branch_id));
            }
        }
    }
    out
}

/// The templates of a step: the keys the shape lists as templates, and the values of an
/// `update_field`'s `set`, one template per column (the shape lists keys that hold one).
fn templates_of<'j>(step: &'j Json, kind: &str) -> Vec<(String, &'j str)> {
    let mut out = Vec::new();
    for key in shape().step_type(kind).map(|t| &t.templates[..]).unwrap_or_default() {
        if let Some(source) = step.get(key).and_then(Json::as_str) {
            out.push((key.clone(), source));
        }
    }
    if kind == "update_field" {
        for (column, value) in step.get("set").and_then(Json::as_object).into_iter().flatten() {
            if let Some(source) = value.as_str() {
                out.push((format!("set.{column}"), source));
            }
        }
    }
    out
}

fn check_template(data: &Data, earlier: &Earlier, path: &str, source: &str, problems: &mut Vec<Problem>) {
    // One that does not compile is the parser's to report.
    let Some(tree) = render::syntax_tree(source) else {
        return;
    };
    let mut walk = Walk {
        data,
        earlier,
        messages: Vec::new(),
    };
    walk.stmts(std::slice::from_ref(&tree), &mut Scope::default());
    for message in walk.messages {
        problems.push(Problem::new(path, message));
    }
}

/// A variable and the names followed into it: `steps.hook.json` is `["steps", "hook", "json"]`.
type Path = Vec<String>;

/// What is known where an expression is read: the template's own names (loop variables,
/// `{% set %}`, `{% with %}`) and the paths a test has shown to be defined.
#[derive(Debug, Clone, Default)]
struct Scope {
    locals: BTreeSet<String>,
    defined: Vec<Path>,
}

impl Scope {
    fn knowing(&self, paths: Vec<Path>) -> Scope {
        let mut s = self.clone();
        s.defined.extend(paths);
        s
    }

    /// Whether a test has shown `path` defined: it, or a path through it.
    fn knows(&self, path: &[String]) -> bool {
        self.defined.iter().any(|d| d.starts_with(path))
    }
}

/// How a read is used, for a hint when its variable is missing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Use {
    Plain,
    /// Tested for truth (`{% if x %}`, `not x`, `x and …`).
    Tested,
    /// The left of `or` (`x or "y"`), as if it allowed `x` to be missing.
    Fallback,
}

/// A template's reads, walked in the order it renders them.
struct Walk<'a> {
    data: &'a Data<'a>,
    earlier: &'a Earlier,
    messages: Vec<String>,
}

impl Walk<'_> {
    fn stmts(&mut self, body: &[Stmt], scope: &mut Scope) {
        for stmt in body {
            self.stmt(stmt, scope);
        }
    }

    fn stmt(&mut self, stmt: &Stmt, scope: &mut Scope) {
        match stmt {
            Stmt::Template(t) => self.stmts(&t.children, scope),
            Stmt::EmitExpr(e) => self.expr(&e.expr, scope, Use::Plain),
            Stmt::ForLoop(f) => {
                self.expr(&f.iter, scope, Use::Plain);
                let mut inner = scope.clone();
                bind(&f.target, &mut inner);
                if let Some(filter) = &f.filter_expr {
                    // The loop's filter sees the item but not `loop`.
                    self.expr(filter, &inner, Use::Tested);
                    inner = inner.knowing(facts(filter).when_true);
                }
                inner.locals.insert("loop".to_owned());
                self.stmts(&f.body, &mut inner);
                // `{% else %}` runs when there was no item; names set in a loop stay in it.
                self.stmts(&f.else_body, &mut scope.clone());
            }
            Stmt::IfCond(c) => {
                self.expr(&c.expr, scope, Use::Tested);
                let facts = facts(&c.expr);
                let mut yes = scope.knowing(facts.when_true);
                let mut no = scope.knowing(facts.when_false);
                self.stmts(&c.true_body, &mut yes);
                self.stmts(&c.false_body, &mut no);
                // A name is set after the `if` only when both ways set it.
                scope.locals.extend(yes.locals.intersection(&no.locals).cloned());
            }
            Stmt::WithBlock(w) => {
                let mut inner = scope.clone();
                for (target, value) in &w.assignments {
                    self.expr(value, &inner, Use::Plain);
                    bind(target, &mut inner);
                }
                self.stmts(&w.body, &mut inner);
            }
            Stmt::Set(s) => {
                self.expr(&s.expr, scope, Use::Plain);
                self.assign(&s.target, scope);
            }
            Stmt::SetBlock(s) => {
                self.stmts(&s.body, scope);
                if let Some(filter) = &s.filter {
                    self.expr(filter, scope, Use::Plain);
                }
                self.assign(&s.target, scope);
            }
            Stmt::AutoEscape(a) => {
                self.expr(&a.enabled, scope, Use::Plain);
                self.stmts(&a.body, scope);
            }
            Stmt::FilterBlock(f) => {
                self.stmts(&f.body, scope);
                self.expr(&f.filter, scope, Use::Plain);
            }
            Stmt::Do(d) => self.call(&d.call, scope),
            // Raw text, and statements of features Herald's minijinja is built without.
            _ => {}
        }
    }

    /// `{% set x = … %}` names `x`; `{% set ns.x = … %}` reads `ns`.
    fn assign(&mut self, target: &Expr, scope: &mut Scope) {
        match target {
            Expr::GetAttr(a) => self.expr(&a.expr, scope, Use::Plain),
            other => bind(other, scope),
        }
    }

    fn expr(&mut self, expr: &Expr, scope: &Scope, how: Use) {
        if let Some(lookup) = lookup(expr) {
            return self.read(lookup, false, how, scope);
        }
        match expr {
            Expr::Slice(s) => {
                self.expr(&s.expr, scope, Use::Plain);
                for part in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    self.expr(part, scope, Use::Plain);
                }
            }
            Expr::UnaryOp(u) => {
                let how = match u.op {
                    UnaryOpKind::Not => Use::Tested,
                    UnaryOpKind::Neg => Use::Plain,
                };
                self.expr(&u.expr, scope, how);
            }
            Expr::BinOp(b) => match b.op {
                // The right is read only when the left is true (`and`) or false (`or`).
                BinOpKind::ScAnd => {
                    self.expr(&b.left, scope, Use::Tested);
                    self.expr(&b.right, &scope.knowing(facts(&b.left).when_true), how);
                }
                BinOpKind::ScOr => {
                    let left = if how == Use::Tested { Use::Tested } else { Use::Fallback };
                    self.expr(&b.left, scope, left);
                    self.expr(&b.right, &scope.knowing(facts(&b.left).when_false), how);
                }
                _ => {
                    self.expr(&b.left, scope, Use::Plain);
                    self.expr(&b.right, scope, Use::Plain);
                }
            },
            Expr::Compare(c) => {
                self.expr(&c.expr, scope, Use::Plain);
                for op in &c.ops {
                    self.expr(&op.expr, scope, Use::Plain);
                }
            }
            Expr::IfExpr(i) => {
                self.expr(&i.test_expr, scope, Use::Tested);
                let facts = facts(&i.test_expr);
                self.expr(&i.true_expr, &scope.knowing(facts.when_true), how);
                if let Some(otherwise) = &i.false_expr {
                    self.expr(otherwise, &scope.knowing(facts.when_false), how);
                }
            }
            Expr::Filter(f) => {
                match (&f.expr, matches!(f.name, "default" | "d")) {
                    // `x | default(…)` renders without `x`.
                    (Some(value), true) if lookup(value).is_some() => self.optional(value, scope),
                    (Some(value), _) => self.expr(value, scope, Use::Plain),
                    (None, _) => {}
                }
                self.args(&f.args, scope);
            }
            Expr::Test(t) => {
                match matches!(t.name, "defined" | "undefined") {
                    true if lookup(&t.expr).is_some() => self.optional(&t.expr, scope),
                    _ => self.expr(&t.expr, scope, Use::Plain),
                }
                self.args(&t.args, scope);
            }
            Expr::Call(c) => self.call(c, scope),
            Expr::List(l) => {
                for item in &l.items {
                    self.expr(item, scope, Use::Plain);
                }
            }
            Expr::Map(m) => {
                for item in m.keys.iter().chain(&m.values) {
                    self.expr(item, scope, Use::Plain);
                }
            }
            // Constants; lookups are read above.
            _ => {}
        }
    }

    /// A read that renders whether or not its last name is there.
    fn optional(&mut self, expr: &Expr, scope: &Scope) {
        if let Some(lookup) = lookup(expr) {
            self.read(lookup, true, Use::Plain, scope);
        }
    }

    fn call(&mut self, call: &Call, scope: &Scope) {
        match &call.expr {
            // A method: its name is the method's, not a key of the value.
            Expr::GetAttr(a) => self.expr(&a.expr, scope, Use::Plain),
            other => self.expr(other, scope, Use::Plain),
        }
        self.args(&call.args, scope);
    }

    fn args(&mut self, args: &[CallArg], scope: &Scope) {
        for arg in args {
            match arg {
                CallArg::Pos(e) | CallArg::Kwarg(_, e) | CallArg::PosSplat(e) | CallArg::KwargSplat(e) => {
                    self.expr(e, scope, Use::Plain)
                }
            }
        }
    }

    /// Each name of a lookup is read from the value before it, which must be there; so must
    /// the last, unless the read is `optional`. The first missing one is the problem.
    fn read(&mut self, lookup: Lookup, optional: bool, how: Use, scope: &Scope) {
        let path = lookup.path;
        let needed = match optional && lookup.named {
            true => path.len() - 1,
            false => path.len(),
        };
        for n in 1..=needed {
            if let Err(missing) = self.resolve(&path[..n], scope) {
                let how = if n == path.len() { how } else { Use::Plain };
                self.report(&path[..n], missing, how);
                break;
            }
        }
        for key in lookup.keys {
            self.expr(key, scope, Use::Plain);
        }
    }

    /// Whether the value at `path` is there when the template renders.
    fn resolve(&self, path: &[String], scope: &Scope) -> Result<(), Missing> {
        let root = path[0].as_str();
        if scope.knows(path) || scope.locals.contains(root) {
            return Ok(());
        }
        match (root, &path[1..]) {
            ("herald", [field]) => self.within(field, &self.data.herald, "herald", || {
                format!(": herald has {}", quoted(&self.data.herald))
            }),
            ("steps", [id]) => self.step(id),
            ("payload", [key]) if self.data.has_payload() => self.payload_key(key),
            ("herald" | "steps", _) => Ok(()),
            ("payload", _) if self.data.has_payload() => Ok(()),
            (name, []) if !self.data.has(name) => Err(self.unknown_name(name, scope)),
            // A column, or a key inside one: its value's own keys are not known here.
            _ => Ok(()),
        }
    }

    fn payload_key(&self, key: &str) -> Result<(), Missing> {
        let Payload::Keys { trigger, keys } = &self.data.payload else {
            return Ok(());
        };
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        self.within(key, &keys, "payload", || {
            format!(": a {trigger} trigger's payload has {}", quoted(&keys))
        })
    }

    /// `name` as one of the closed set `names` of the object `parent`.
    fn within(
        &self,
        name: &str,
        names: &[String],
        parent: &str,
        otherwise: impl Fn() -> String,
    ) -> Result<(), Missing> {
        if names.iter().any(|n| n == name) {
            return Ok(());
        }
        let candidates = names.iter().map(|n| (n.as_str(), accessor(parent, n)));
        Err(Missing::Unknown(match nearest(name, candidates) {
            Some(s) => did_you_mean(&s),
            None => otherwise(),
        }))
    }

    fn step(&self, id: &str) -> Result<(), Missing> {
        match self.earlier.iter().rev().find(|(e, _)| e == id) {
            Some((_, Output::Ran)) => return Ok(()),
            Some((_, Output::Maybe(why))) => return Err(Missing::Maybe(why.clone())),
            Some((_, Output::Never(why))) => return Err(Missing::Never(why.clone())),
            None => {}
        }
        let with_output: Vec<String> = self
            .earlier
            .iter()
            .filter(|(_, o)| !matches!(o, Output::Never(_)))
            .map(|(e, _)| e.clone())
            .collect();
        let candidates = with_output.iter().map(|e| (e.as_str(), accessor("steps", e)));
        let why = match (self.data.ids.contains(id), nearest(id, candidates)) {
            (true, _) => format!(": step \"{id}\" has not run when this one does"),
            (false, Some(s)) => return Err(Missing::Unknown(did_you_mean(&s))),
            (false, None) => format!(": there is no step \"{id}\""),
        };
        let earlier = match with_output.is_empty() {
            true => "no step before this one has an output".to_owned(),
            false => format!("the steps before this one with an output are {}", quoted(&with_output)),
        };
        Err(Missing::Unknown(format!("{why}; {earlier}")))
    }

    /// A top-level name that is not in the data: the nearest name there is, if near.
    fn unknown_name(&self, name: &str, scope: &Scope) -> Missing {
        if name == "payload" {
            if let Payload::Absent(kind) = &self.data.payload {
                return Missing::Unknown(format!(
                    ": a {kind} trigger starts no payload (manual, date and schedule triggers do)"
                ));
            }
        }
        let mut candidates: Vec<(&str, String)> = Vec::new();
        let columns = self.data.columns.unwrap_or_default();
        let names = columns.iter().chain(&scope.locals).map(String::as_str);
        candidates.extend(names.map(|n| (n, n.to_owned())));
        candidates.extend(["herald", "steps"].map(|n| (n, n.to_owned())));
        if self.data.has_payload() {
            candidates.push(("payload", "payload".to_owned()));
        }
        // An earlier step's output written without `steps.`.
        for (id, output) in self.earlier {
            if !matches!(output, Output::Never(_)) {
                candidates.push((id.as_str(), accessor("steps", id)));
            }
        }
        Missing::Unknown(match nearest(name, candidates) {
            Some(s) => did_you_mean(&s),
            None => ": the data has no such column".to_owned(),
        })
    }

    fn report(&mut self, path: &[String], missing: Missing, how: Use) {
        let shown = shown(path);
        let message = match missing {
            Missing::Unknown(why) => {
                let hint = match how {
                    Use::Plain => String::new(),
                    Use::Tested => format!("; a test of a missing variable fails: write `{shown} is defined`"),
                    Use::Fallback => {
                        format!("; `or` fails on a missing variable: write `{shown} | default(\"…\")`")
                    }
                };
                format!("unknown variable \"{shown}\"{why}{hint}")
            }
            Missing::Maybe(why) => {
                format!("variable \"{shown}\" may be missing: {why}; test it with `{{% if {shown} is defined %}}`")
            }
            Missing::Never(why) => format!("variable \"{shown}\" is never set: {why}"),
        };
        if !self.messages.contains(&message) {
            self.messages.push(message);
        }
    }
}

/// Why a read fails: the end of its message.
enum Missing {
    Unknown(String),
    Maybe(String),
    Never(String),
}

/// A read of a variable and of names inside it (`a.b["c"]`); a key computed by an expression
/// ends the names (`named` is then false), and that expression is read on its own.
struct Lookup<'e, 's> {
    path: Path,
    named: bool,
    keys: Vec<&'e Expr<'s>>,
}

fn lookup<'e, 's>(expr: &'e Expr<'s>) -> Option<Lookup<'e, 's>> {
    match expr {
        Expr::Var(v) => Some(Lookup {
            path: vec![v.id.to_owned()],
            named: true,
            keys: Vec::new(),
        }),
        Expr::GetAttr(a) => {
            let mut l = lookup(&a.expr)?;
            if l.named {
                l.path.push(a.name.to_owned());
            }
            Some(l)
        }
        Expr::GetItem(g) => {
            let mut l = lookup(&g.expr)?;
            let key = match &g.subscript_expr {
                Expr::Const(c) => c.value.as_str(),
                _ => None,
            };
            match key {
                Some(key) if l.named => l.path.push(key.to_owned()),
                _ => {
                    l.named = false;
                    l.keys.push(&g.subscript_expr);
                }
            }
            Some(l)
        }
        _ => None,
    }
}

/// The names a loop, `{% set %}` or `{% with %}` binds: `x`, or `a, b`.
fn bind(target: &Expr, scope: &mut Scope) {
    match target {
        Expr::Var(v) => {
            scope.locals.insert(v.id.to_owned());
        }
        Expr::List(l) => l.items.iter().for_each(|item| bind(item, scope)),
        _ => {}
    }
}

/// The paths an expression shows defined when it is true, and when it is false.
#[derive(Default)]
struct Facts {
    when_true: Vec<Path>,
    when_false: Vec<Path>,
}

fn facts(expr: &Expr) -> Facts {
    match expr {
        Expr::Test(t) if matches!(t.name, "defined" | "undefined") => {
            let Some(l) = lookup(&t.expr) else {
                return Facts::default();
            };
            match t.name {
                "defined" => Facts {
                    when_true: vec![l.path],
                    when_false: Vec::new(),
                },
                _ => Facts {
                    when_true: Vec::new(),
                    when_false: vec![l.path],
                },
            }
        }
        Expr::UnaryOp(u) if matches!(u.op, UnaryOpKind::Not) => {
            let f = facts(&u.expr);
            Facts {
                when_true: f.when_false,
                when_false: f.when_true,
            }
        }
        // Both sides hold when `a and b` is true; both fail when `a or b` is false.
        Expr::BinOp(b) if matches!(b.op, BinOpKind::ScAnd) => Facts {
            when_true: [facts(&b.left).when_true, facts(&b.right).when_true].concat(),
            when_false: Vec::new(),
        },
        Expr::BinOp(b) if matches!(b.op, BinOpKind::ScOr) => Facts {
            when_true: Vec::new(),
            when_false: [facts(&b.left).when_false, facts(&b.right).when_false].concat(),
        },
        _ => Facts::default(),
    }
}

/// The candidate nearest `name`, when near enough to be a slip: at most two edits
/// (a transposition is one), and most of the name kept. Candidates are (name, as suggested).
fn nearest<'c>(name: &str, candidates: impl IntoIterator<Item = (&'c str, String)>) -> Option<String> {
    candidates
        .into_iter()
        .map(|(c, shown)| (strsim::damerau_levenshtein(name, c), c, shown))
        .filter(|(d, c, _)| *d <= 2 && strsim::normalized_damerau_levenshtein(name, c) >= 0.6)
        .min_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)))
        .map(|(_, _, shown)| shown)
}

fn did_you_mean(suggestion: &str) -> String {
    format!("; did you mean \"{suggestion}\"?")
}

/// `parent.name`, or `parent['night-before']` for a name that is not an identifier.
fn accessor(parent: &str, name: &str) -> String {
    let mut chars = name.chars();
    let identifier = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    match identifier {
        true => format!("{parent}.{name}"),
        false => format!("{parent}['{name}']"),
    }
}

/// A path as a template writes it.
fn shown(path: &[String]) -> String {
    path[1..].iter().fold(path[0].clone(), |at, name| accessor(&at, name))
}

/// `"a", "b"`.
fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{render_text, Moment};
    use serde_json::json;

    fn columns() -> Vec<String> {
        [
            "first_name",
            "email",
            "phone",
            "status",
            "starts_at",
            "items",
            "nothing",
        ]
        .map(String::from)
        .to_vec()
    }

    /// A manual flow whose first step's subject is `template`.
    fn subject(template: &str) -> Json {
        json!({"trigger": {"type": "manual"},
               "steps": [{"id": "hi", "type": "send_email", "to": "{{ email }}", "subject": template, "text": "x"}]})
    }

    /// The messages of the problems of `doc`'s templates, as `path: message`.
    fn problems(doc: &Json) -> Vec<String> {
        variable_problems(doc, &columns())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn render(template: &str, vars: &Json) -> Result<String, String> {
        let moment = Moment {
            at: "2026-12-13T12:00:00Z".parse().unwrap(),
            zone: jiff::tz::TimeZone::UTC,
        };
        render_text("t", template, vars, false, &moment).map_err(|e| e.to_string())
    }

    #[test]
    fn what_passes_for_a_missing_variable_is_what_renders_without_it() {
        // (template, renders when `nickname` is missing), in the environment templates render
        // in: the check passes these templates exactly when they render.
        let cases = [
            ("{{ nickname | default(\"friend\") }}", true),
            ("{{ nickname | d(\"friend\") }}", true),
            ("{% if nickname is defined %}{{ nickname }}{% else %}friend{% endif %}", true),
            ("{% if nickname is undefined %}friend{% else %}{{ nickname }}{% endif %}", true),
            ("{% if nickname is not defined %}friend{% else %}{{ nickname }}{% endif %}", true),
            ("{{ nickname if nickname is defined else \"friend\" }}", true),
            ("{% if nickname is defined and nickname %}{{ nickname }}{% endif %}friend", true),
            ("{% if nickname is defined %}{% set n = nickname %}{% else %}{% set n = \"friend\" %}{% endif %}{{ n }}", true),
            ("{{ nickname or \"friend\" }}", false),
            ("{% if nickname %}{{ nickname }}{% endif %}friend", false),
            ("{{ \"friend\" if nickname else \"x\" }}", false),
            ("{% if nickname == \"Nick\" %}Nick{% endif %}friend", false),
            ("{{ nickname | upper | default(\"friend\") }}", false),
            ("{% if nickname is defined %}{% set n = nickname %}{% endif %}{{ n }}", false),
            ("{{ nickname.first | default(\"friend\") }}", false),
        ];
        let vars = json!({"first_name": "Ann"});
        for (template, renders) in cases {
            let rendered = render(template, &vars);
            assert_eq!(rendered.is_ok(), renders, "{template}: {rendered:?}");
            let found = problems(&subject(template));
            assert_eq!(found.is_empty(), renders, "{template}: {found:?}");
        }
        // Other tests render without the variable but show nothing of it: a misspelt name is
        // more likely than a wish to know that a column is missing.
        assert_eq!(render("{{ nickname is none }}", &vars), Ok("False".into()));
        assert_eq!(problems(&subject("{{ nickname is none }}")).len(), 1);
        // `or` and `| default` differ on NULL, which the check cannot see: `or` covers it.
        let null = json!({"nothing": null});
        assert_eq!(render("{{ nothing or \"x\" }}", &null), Ok("x".into()));
        assert!(render("{{ nothing | default(\"x\") }}", &null).is_err());
        assert_eq!(render("{{ nothing | default(\"x\", true) }}", &null), Ok("x".into()));
        assert_eq!(render("{{ nickname | default(\"x\", true) }}", &null), Ok("x".into()));
    }

    /// Each template, as the subject of a manual flow's email, against the problems it has.
    fn assert_subjects(cases: &[(&str, &[&str])]) {
        for (template, want) in cases {
            let want: Vec<String> = want.iter().map(|m| format!("steps[0].subject: {m}")).collect();
            assert_eq!(problems(&subject(template)), want, "{template}");
        }
    }

    #[test]
    fn columns_herald_and_the_templates_own_names_are_read() {
        assert_subjects(&[
            ("Hi {{ first_name }}", &[]),
            (
                "Hi {{ frist_name }}",
                &["unknown variable \"frist_name\"; did you mean \"first_name\"?"],
            ),
            ("{{ fone }}", &["unknown variable \"fone\"; did you mean \"phone\"?"]),
            (
                "{{ cost }}",
                &["unknown variable \"cost\": the data has no such column"],
            ),
            (
                "{{ herald.new_status }} {{ herald.event }} {{ herald.subject_id }}",
                &[],
            ),
            (
                "{{ herald.nwe_status }}",
                &["unknown variable \"herald.nwe_status\"; did you mean \"herald.new_status\"?"],
            ),
            (
                "{{ herald.colour }}",
                &[
                    "unknown variable \"herald.colour\": herald has \"event\", \"log_id\", \"new_status\", \
                   \"old_status\", \"subject_id\", \"subject_table\"",
                ],
            ),
            (
                "{{ hreald.event }}",
                &["unknown variable \"hreald\"; did you mean \"herald\"?"],
            ),
            // Inside a column's value, keys are not known here.
            ("{{ items.first.name }}", &[]),
            (
                "{% for item in items %}{{ item.name }} {{ loop.index }}{% endfor %}",
                &[],
            ),
            ("{% for k, v in items | dictsort %}{{ k }}={{ v }}{% endfor %}", &[]),
            (
                "{% for item in items %}{{ itme }}{% endfor %}",
                &["unknown variable \"itme\"; did you mean \"item\"?"],
            ),
            (
                "{% for item in items %}{% else %}{{ loop.index }}{% endfor %}",
                &["unknown variable \"loop\": the data has no such column"],
            ),
            (
                "{% for item in items %}{% set last = item %}{% endfor %}{{ last }}",
                &["unknown variable \"last\": the data has no such column"],
            ),
            ("{% set greeting = \"Hi\" %}{{ greeting }} {{ first_name }}", &[]),
            ("{% set greeting %}Hi {{ first_name }}{% endset %}{{ greeting }}", &[]),
            (
                "{{ greeting }}{% set greeting = \"Hi\" %}",
                &["unknown variable \"greeting\": the data has no such column"],
            ),
            ("{% set ns = namespace(n=0) %}{% set ns.n = 1 %}{{ ns.n }}", &[]),
            ("{% with name = first_name %}{{ name }}{% endwith %}", &[]),
            ("{{ range(3) | join(\",\") }} {{ first_name.upper() }}", &[]),
        ]);
    }

    #[test]
    fn only_forms_that_render_without_a_variable_make_it_optional() {
        assert_subjects(&[
            ("{{ nickname | default(first_name) }}", &[]),
            (
                "{{ nickname | default(frist_name) }}",
                &["unknown variable \"frist_name\"; did you mean \"first_name\"?"],
            ),
            (
                "{% if nickname is defined %}{{ nickname }}{% else %}{{ first_name }}{% endif %}",
                &[],
            ),
            ("{{ nickname if nickname is defined else first_name }}", &[]),
            (
                "{{ nickname or first_name }}",
                &[
                    "unknown variable \"nickname\": the data has no such column; `or` fails on a missing variable: \
                   write `nickname | default(\"…\")`",
                ],
            ),
            (
                "{% if vip %}VIP{% endif %}",
                &[
                    "unknown variable \"vip\": the data has no such column; a test of a missing variable fails: \
                   write `vip is defined`",
                ],
            ),
            // The test guards what it names, not what is outside it.
            (
                "{% if nickname is defined %}{% endif %}{{ nickname }}",
                &["unknown variable \"nickname\": the data has no such column"],
            ),
            // Only the last name may be missing: `nickname.first` is read from `nickname`.
            (
                "{{ nickname.first | default(\"x\") }}",
                &["unknown variable \"nickname\": the data has no such column"],
            ),
            (
                "{% if nickname.first is defined %}{{ nickname.first }}{% endif %}",
                &["unknown variable \"nickname\": the data has no such column"],
            ),
            (
                "{% if nickname is defined %}{{ nickname.first | default(\"x\") }}{% endif %}",
                &[],
            ),
        ]);
    }

    #[test]
    fn the_payload_is_what_the_trigger_starts_with() {
        let doc = |trigger: Json, template: &str| json!({"trigger": trigger, "steps": [{"id": "hi", "type": "send_sms", "to": "{{ phone }}", "body": template}]});
        let date = json!({"type": "date", "table": "members", "column": "renews_at"});
        let schedule = json!({"type": "schedule", "cron": "0 9 * * MON"});
        let status = json!({"type": "status_change", "table": "bookings", "to": "confirmed"});
        let manual = json!({"type": "manual"});
        let cases: [(&Json, &str, &[&str]); 8] = [
            (&manual, "{{ payload.source }} {{ payload.anything.at.all }}", &[]),
            (&date, "{{ payload.date }}, due {{ payload.due }}", &[]),
            (
                &date,
                "{{ payload.daet }}",
                &["unknown variable \"payload.daet\"; did you mean \"payload.date\"?"],
            ),
            (
                &date,
                "{{ payload.source }}",
                &["unknown variable \"payload.source\": a date trigger's payload has \"date\", \"due\""],
            ),
            (&schedule, "{{ payload.occurrence }}", &[]),
            (
                &status,
                "{{ payload.source | default(\"\") }}",
                &[
                    "unknown variable \"payload\": a status_change trigger starts no payload (manual, date and \
                   schedule triggers do)",
                ],
            ),
            (
                &status,
                "{% if payload is defined %}{{ payload.source }}{% endif %}",
                &[],
            ),
            (&status, "{{ herald.old_status }} to {{ herald.new_status }}", &[]),
        ];
        for (trigger, template, want) in cases {
            let want: Vec<String> = want.iter().map(|m| format!("steps[0].body: {m}")).collect();
            assert_eq!(problems(&doc(trigger.clone(), template)), want, "{trigger}: {template}");
        }
    }

    /// A flow with a wait, a step that goes on after errors, and a branch, with `template` as
    /// the body of `remind` (after the branch) or the text of `tell-owner` (inside it).
    fn flow(remind: &str, tell_owner: &str) -> Json {
        json!({"trigger": {"type": "manual"}, "admins": {"emails": ["owner@example.com"]}, "steps": [
            {"id": "confirm", "type": "send_email", "to": "{{ email }}", "subject": "Booked", "text": "x"},
            {"id": "pause", "type": "wait", "for": "1 hour"},
            {"id": "hook", "type": "webhook", "url": "https://hooks.example.com", "body": "{}", "secret": "s",
             "on_error": "continue"},
            {"id": "vip", "type": "branch", "if": {"field": "status", "op": "=", "value": "vip"},
             "then": [{"id": "tell-owner", "type": "notify_admin", "subject": "VIP", "text": tell_owner}],
             "else": [{"id": "tag", "type": "add_tag", "tag": "regular"}]},
            {"id": "remind", "type": "send_sms", "to": "{{ phone }}", "body": remind},
            {"id": "bye", "type": "create_task", "title": "Call {{ first_name }}"}
        ]})
    }

    #[test]
    fn steps_are_read_once_they_have_run() {
        let earlier = "the steps before this one with an output are \"confirm\", \"hook\", \"tell-owner\", \"tag\"";
        let after_the_branch: [(&str, String); 11] = [
            ("{{ steps.confirm.message_id }}", String::new()),
            (
                "{{ steps.confrim.message_id }}",
                "unknown variable \"steps.confrim\"; did you mean \"steps.confirm\"?".into(),
            ),
            (
                "{{ confirm.message_id }}",
                "unknown variable \"confirm\"; did you mean \"steps.confirm\"?".into(),
            ),
            (
                "{{ steps.bye.id }}",
                format!("unknown variable \"steps.bye\": step \"bye\" has not run when this one does; {earlier}"),
            ),
            (
                "{{ steps.remind.message_id }}",
                format!("unknown variable \"steps.remind\": step \"remind\" has not run when this one does; {earlier}"),
            ),
            (
                "{{ steps.nothing }}",
                format!("unknown variable \"steps.nothing\": there is no step \"nothing\"; {earlier}"),
            ),
            (
                "{{ steps.pause }}",
                "variable \"steps.pause\" is never set: step \"pause\" is a wait, which has no output".into(),
            ),
            (
                "{{ steps.hook.status }}",
                "variable \"steps.hook\" may be missing: step \"hook\" goes on after an error (on_error \
                 \"continue\"), without an output; test it with `{% if steps.hook is defined %}`"
                    .into(),
            ),
            (
                "{% if steps.hook is defined %}{{ steps.hook.status }}{% else %}none{% endif %}",
                String::new(),
            ),
            (
                "{{ steps['tell-owner'].message_ids | length }}",
                "variable \"steps['tell-owner']\" may be missing: step \"tell-owner\" runs only on one arm of branch \
                 \"vip\"; test it with `{% if steps['tell-owner'] is defined %}`"
                    .into(),
            ),
            ("{{ steps.tag | default(\"untagged\") }}", String::new()),
        ];
        for (template, want) in after_the_branch {
            let want: Vec<String> = [want]
                .into_iter()
                .filter(|w| !w.is_empty())
                .map(|w| format!("steps[4].body: {w}"))
                .collect();
            assert_eq!(problems(&flow(template, "x")), want, "{template}");
            // What passes renders, even when `hook` failed and the branch took neither step.
            if want.is_empty() {
                let herald = serde_json::to_value(EventInfo::default()).unwrap();
                let vars = json!({"phone": "+14155550100", "herald": herald, "payload": {},
                                  "steps": {"confirm": {"message_id": "m-1"}}});
                assert!(
                    render(template, &vars).is_ok(),
                    "{template}: {:?}",
                    render(template, &vars)
                );
            }
        }
        let inside = "the steps before this one with an output are \"confirm\", \"hook\"";
        let in_the_branch: [(&str, String); 4] = [
            ("{{ steps.confirm.message_id }}", String::new()),
            (
                "{{ steps.vip }}",
                "variable \"steps.vip\" is never set: step \"vip\" is a branch, which has no output".into(),
            ),
            (
                "{{ steps.tag }}",
                format!("unknown variable \"steps.tag\": step \"tag\" has not run when this one does; {inside}"),
            ),
            (
                "{{ steps.remind }}",
                format!("unknown variable \"steps.remind\": step \"remind\" has not run when this one does; {inside}"),
            ),
        ];
        for (template, want) in in_the_branch {
            let want: Vec<String> = [want]
                .into_iter()
                .filter(|w| !w.is_empty())
                .map(|w| format!("steps[3].then[0].text: {w}"))
                .collect();
            assert_eq!(problems(&flow("x", template)), want, "{template}");
        }
        let first = json!({"trigger": {"type": "manual"},
                           "steps": [{"id": "a", "type": "send_sms", "to": "{{ phone }}", "body": "{{ steps.a }}"}]});
        assert_eq!(
            problems(&first),
            [
                "steps[0].body: unknown variable \"steps.a\": step \"a\" has not run when this one does; no step \
              before this one has an output"
            ]
        );
    }

    #[test]
    fn every_template_of_every_step_type_is_checked() {
        for t in &shape().steps {
            let mut keys: Vec<String> = t.templates.clone();
            if t.kind == "update_field" {
                keys.push("set.status".into());
            }
            for key in keys {
                let mut step = crate::workflow::shape::tests::sound_step(&t.kind);
                match key.split_once('.') {
                    Some((map, column)) => step[map][column] = json!("{{ nope }}"),
                    None => step[key.as_str()] = json!("{{ nope }}"),
                }
                let doc = json!({"trigger": {"type": "manual"}, "steps": [step]});
                assert_eq!(
                    problems(&doc),
                    [format!(
                        "steps[0].{key}: unknown variable \"nope\": the data has no such column"
                    )],
                    "{}",
                    t.kind
                );
            }
        }
    }

    #[test]
    fn without_columns_any_name_may_be_one_and_the_rest_is_checked() {
        let cases: [(&str, &[&str]); 5] = [
            ("{{ anything }} {{ at.all }}", &[]),
            ("{% if vip %}{{ nickname or first_name }}{% endif %}", &[]),
            (
                "{{ herald.nwe_status }}",
                &["unknown variable \"herald.nwe_status\"; did you mean \"herald.new_status\"?"],
            ),
            (
                "{{ steps.hi }}",
                &[
                    "unknown variable \"steps.hi\": step \"hi\" has not run when this one does; no step before this \
                   one has an output",
                ],
            ),
            ("{% for item in items %}{{ item }}{% endfor %}{{ item }}", &[]),
        ];
        for (template, want) in cases {
            let want: Vec<String> = want.iter().map(|m| format!("steps[0].subject: {m}")).collect();
            let found: Vec<String> = variable_problems_without_columns(&subject(template))
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(found, want, "{template}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once_and_templates_that_do_not_compile_are_left_to_the_parser() {
        let doc = json!({"trigger": {"type": "manual"}, "steps": [
            {"id": "hi", "type": "send_email", "to": "{{ emial }}", "subject": "{{ frist_name", "text": "{{ a }} {{ b }} {{ a }}"},
            {"id": "b", "type": "branch", "if": {"field": "status", "op": "is null"},
             "then": [{"id": "mark", "type": "update_field", "set": {"note": "{{ steps.hi.message_id }} {{ stauts }}"}}]}
        ]});
        assert_eq!(
            problems(&doc),
            [
                "steps[0].to: unknown variable \"emial\"; did you mean \"email\"?",
                "steps[0].text: unknown variable \"a\": the data has no such column",
                "steps[0].text: unknown variable \"b\": the data has no such column",
                "steps[1].then[0].set.note: unknown variable \"stauts\"; did you mean \"status\"?",
            ]
        );
        let parsed = crate::workflow::definition::parse(&doc).unwrap_err();
        assert!(parsed.iter().any(|p| p.path == "steps[0].subject"), "{parsed:?}");
    }
}
